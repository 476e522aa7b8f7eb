"""Load-time optimisation passes: ``optimize(graph)`` returns a faster graph with the same outputs.

Run by ``Program`` before building its executor; the saved file keeps the unoptimised graph, so
the fused ops never reach a file. Each pass is a small function that rewrites a private copy
in place and returns how many rewrites it made:

1. ``remove_identities``: clone of a non-output, cast to the same dtype, dropout with p = 0,
   reshape/expand whose output shape equals its input's (the tracer records nothing for
   ``nn.Dropout`` / ``nn.Identity`` in eval mode, so these are what is left);
2. ``fold_constants``: nodes whose inputs are all constants run once with the registry kernels;
   symbolic attributes whose scalar became a constant turn into plain ints;
3. ``fold_batch_norm``: conv2d (or 2-d linear) -> eval batch_norm folds into the weight and bias;
4. ``fuse_activations``: linear/conv2d -> relu/gelu becomes ``linear_act`` / ``conv2d_act``, and
   dynamic_quantized_linear -> relu sets the former's ``relu`` attribute;
5. ``fuse_pooling``: conv2d (+ relu) -> 2x2 / stride-2 max_pool2d whose indices are unused becomes
   ``conv2d_pool`` (the pooling happens as the conv result leaves its GEMM);
6. ``fold_quantization`` (qpasses.py): a converted int8 model stays in uint8 between its int8 layers
   (dequantize moved past max pooling and reshape, dequantize -> quantize pairs become a table);
7. ``fold_requantize_into_convs`` (qpasses.py, CPU only): a requantize read only by a quantized_conv2d_pool becomes
   that conv's ``in_requant`` (its table looked up by the conv);
   ``fuse_dynamic_chains`` and ``fuse_linear_chains`` (chains.py, CPU only): dynamic_quantized_linear layers,
   and float32 linear (+ relu) layers with constant weights, each feeding the next, become one
   ``dynamic_quantized_mlp`` / ``linear_mlp`` node (one native task for the whole chain);
8. ``simplify_batch_reshapes`` (CPU only): a reshape to (batch, n1, ...) whose batch size is its input's own
   dim 0 becomes a reshape to (-1, n1, ...), without a symbol to resolve per call;
9. ``eliminate_dead_code``: nodes and constants no output depends on.
"""
from __future__ import annotations

import numpy as np

from ember.ops import fused  # noqa: F401  (registers the fused ops)
from ember.ops.registry import get_op

from .ir import Graph, Node, Sym, Value, _sym_refs

# A folded constant may not be much larger than what it is computed from: expanding a small
# constant to a big one would trade a cheap op for memory (and a large load-time allocation).
_FOLD_MIN_BYTES = 1 << 20
_FOLD_GROWTH = 4
_NEVER_FOLD = {"dropout"}  # random: its value is not a function of its inputs
_ACTS = {"relu": lambda attrs: "relu",
         "gelu": lambda attrs: "gelu_tanh" if attrs.get("approximate", "none") == "tanh" else "gelu"}
_FUSED = {"linear": "linear_act", "conv2d": "conv2d_act"}


# Input counts the passes rely on. A node outside these (possible in a hand-edited file: the
# archive checks names, values and attributes, not arities) is left alone and fails when run.
_ARITY = {"relu": (1, 1), "gelu": (1, 1), "linear": (2, 3), "conv2d": (2, 3), "batch_norm": (5, 5),
          "max_pool2d": (1, 1), "dropout": (1, 1), "clone": (1, 1), "cast": (1, 1), "reshape": (1, 1),
          "expand": (1, 1), "dequantize": (3, 3), "quantize_per_tensor": (3, 3)}


def _well_formed(n) -> bool:
    lo, hi = _ARITY.get(n.op, (0, 1 << 30))
    return lo <= len(n.inputs) <= hi and len(n.outputs) == get_op(n.op).n_outputs


def optimize(graph: Graph, device: str = "cpu") -> Graph:
    """A new, optimised graph computing the same outputs as ``graph`` (which is left unchanged), for ``device``
    (some fused ops have CPU kernels only)."""
    if not all(_well_formed(n) for n in graph.nodes):
        return graph  # not ours to rewrite: run it as it is (its kernels report the problem)
    g = copy_graph(graph)
    eliminate_dead_code(g)
    remove_identities(g)
    fold_constants(g)
    fold_batch_norm(g)
    fuse_activations(g)
    fuse_pooling(g)
    from .qpasses import fold_quantization  # (qpasses builds on this module's helpers)

    fold_quantization(g)
    if device == "cpu":
        from .chains import fuse_dynamic_chains, fuse_linear_chains
        from .qpasses import fold_requantize_into_convs

        fold_requantize_into_convs(g)

        fuse_dynamic_chains(g)
        fuse_linear_chains(g)
        simplify_batch_reshapes(g)
    eliminate_dead_code(g)
    return g


def copy_graph(graph: Graph) -> Graph:
    """A copy whose values, nodes and constant table can be rewritten (the arrays are shared, never written)."""
    g = Graph()
    g.values = {k: Value(v.name, v.dtype, tuple(v.shape)) for k, v in graph.values.items()}
    g.nodes = [Node(n.op, list(n.inputs), list(n.outputs), dict(n.attrs), n.version) for n in graph.nodes]
    g.inputs = list(graph.inputs)
    g.outputs = list(graph.outputs)
    g.constants = dict(graph.constants)
    return g


# ---- helpers -------------------------------------------------------------------------------------
def _users(g) -> dict:
    """value name -> the nodes reading it (graph outputs count as a user ``None``)."""
    users = {}
    for n in g.nodes:
        for name in dict.fromkeys(list(n.inputs) + list(_sym_refs(n.attrs))):
            users.setdefault(name, []).append(n)
    for name in g.outputs:
        users.setdefault(name, []).append(None)
    return users


def _replace_uses(g, old, new):
    for n in g.nodes:
        n.inputs = [new if x == old else x for x in n.inputs]
        if old in set(_sym_refs(n.attrs)):
            n.attrs = _map_syms(n.attrs, lambda s: Sym(new) if s == old else Sym(s))


def _map_syms(obj, fn):
    """Rebuild an attribute structure with every ``{"sym": name}`` replaced by ``fn(name)``."""
    if isinstance(obj, dict):
        if set(obj) == {"sym"}:
            return fn(obj["sym"])
        return {k: _map_syms(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_syms(v, fn) for v in obj)
    return obj


def _fresh(g, base):
    name, i = base, 1
    while name in g.values:
        i += 1
        name = f"{base}{i}"
    return name


def _add_constant(g, base, array):
    name = _fresh(g, base)
    g.values[name] = Value(name, array.dtype.name, tuple(array.shape))
    g.constants[name] = array
    return name


# ---- 1. identities -------------------------------------------------------------------------------
def _is_identity(g, n, users) -> bool:
    if len(n.inputs) != 1 or n.outputs[0] in g.outputs:
        return False
    src, out = g.values[n.inputs[0]], g.values[n.outputs[0]]
    if src.dtype != out.dtype:
        return False
    if n.op == "clone":
        return True
    if n.op == "cast":
        return True  # same dtype (checked above)
    if n.op == "dropout":
        return n.attrs.get("p", 0.5) == 0 and not users.get(n.outputs[1])
    if n.op in ("reshape", "expand"):
        # equal IR shapes are equal at run time: symbolic dims are named by their expression
        return tuple(src.shape) == tuple(out.shape)
    return False


def remove_identities(g: Graph) -> int:
    """Drop nodes that return their input unchanged, pointing their users at the input."""
    users = _users(g)
    kept, removed = [], 0
    for n in g.nodes:
        if _is_identity(g, n, users):
            _replace_uses(g, n.outputs[0], n.inputs[0])
            removed += 1
        else:
            kept.append(n)
    g.nodes = kept
    return removed


def simplify_batch_reshapes(g: Graph) -> int:
    """``reshape(x, (int(s), n1, ...))`` whose symbol ``s = sym_size(y, d)`` is x's own dim 0 (one symbol in the
    signature) and whose other sizes are positive ints becomes ``reshape(x, (-1, n1, ...))``: the same shape,
    with no symbol to resolve per call (the ``flatten`` of a traced cnn: ``x.reshape(x.shape[0], -1)``); the
    sym_size node goes when nothing else reads it. CPU only (numpy's -1)."""
    prod, done = _producers(g), 0
    for n in g.nodes:
        shape = n.attrs.get("shape") if n.op == "reshape" else None
        if not isinstance(shape, (tuple, list)) or not shape:
            continue
        refs, rest = list(_sym_refs(shape[0])), tuple(shape[1:])
        if len(refs) != 1 or not isinstance(shape[0], dict) or not all(type(d) is int and d > 0 for d in rest):
            continue
        src = prod.get(refs[0])
        if src is None or src.op != "sym_size":
            continue
        dims = g.values[src.inputs[0]].shape
        d = src.attrs.get("dim", 0)
        sym = dims[d] if -len(dims) <= d < len(dims) else None
        xs = g.values[n.inputs[0]].shape
        if not isinstance(sym, str) or not xs or xs[0] != sym:
            continue
        n.attrs = {**n.attrs, "shape": (-1,) + rest}
        done += 1
    return done


# ---- 2. constant folding -------------------------------------------------------------------------
def _static_nbytes(value):
    if any(not isinstance(d, int) for d in value.shape):
        return None
    return int(np.prod(value.shape, dtype=np.int64)) * np.dtype(value.dtype).itemsize


def fold_constants(g: Graph) -> int:
    """Evaluate nodes whose inputs are all constants once; inline constant scalars into sym attributes."""
    kept, folded = [], 0
    for n in g.nodes:
        refs = set(_sym_refs(n.attrs))
        if refs and refs <= set(g.constants):
            n.attrs = _map_syms(n.attrs, lambda s: int(np.asarray(g.constants[s])) if s in g.constants else Sym(s))
            refs = set()
        # a graph output stays computed: a constant output would hand every caller the same array
        if (refs or n.op in _NEVER_FOLD or any(o in g.outputs for o in n.outputs)
                or not all(x in g.constants for x in n.inputs)):
            kept.append(n)
            continue
        outs = [g.values[o] for o in n.outputs]
        sizes = [_static_nbytes(v) for v in outs]
        budget = max(_FOLD_MIN_BYTES, _FOLD_GROWTH * sum(g.constants[x].nbytes for x in n.inputs))
        if any(s is None or s > budget for s in sizes):
            kept.append(n)
            continue
        try:
            res = get_op(n.op).kernels["cpu"](*[g.constants[x] for x in n.inputs], **n.attrs)
        except Exception:  # noqa: BLE001 - e.g. a hand-edited file's bad attrs: the node then fails when run
            kept.append(n)
            continue
        res = tuple(res) if len(n.outputs) > 1 else (res,)
        if len(res) != len(n.outputs):
            kept.append(n)
            continue
        arrays = [np.asarray(a, order="C") for a in res]  # (ascontiguousarray makes 0-d arrays 1-d)
        if any(a.dtype.name != v.dtype or a.shape != tuple(v.shape) for a, v in zip(arrays, outs)):
            kept.append(n)  # the graph's record disagrees with the kernel: leave it to run as recorded
            continue
        for name, a in zip(n.outputs, arrays):
            g.constants[name] = a
        folded += 1
    g.nodes = kept
    return folded


# ---- 3. batch norm folding -----------------------------------------------------------------------
def _producers(g) -> dict:
    return {o: n for n in g.nodes for o in n.outputs}


def fold_batch_norm(g: Graph) -> int:
    """conv2d (or linear with a 2-d output) followed only by an eval batch_norm: scale the weight
    and shift the bias instead, computed in float64 and rounded once."""
    users, prod = _users(g), _producers(g)
    drop, folded = set(), 0
    for bn in g.nodes:
        if bn.op != "batch_norm" or not all(x in g.constants for x in bn.inputs[1:]):
            continue
        x = bn.inputs[0]
        p = prod.get(x)
        if p is None or p.op not in ("conv2d", "linear") or users.get(x) != [bn]:
            continue
        if p.op == "linear" and len(g.values[x].shape) != 2:
            continue  # batch_norm's channel dim is dim 1: only a 2-d linear output puts features there
        w_name, b_name = p.inputs[1], (p.inputs[2] if len(p.inputs) > 2 else None)
        if w_name not in g.constants or (b_name is not None and b_name not in g.constants):
            continue
        w = g.constants[w_name]
        if w.dtype not in (np.float32, np.float64):
            continue
        rm, rv, gamma, beta = (g.constants[c].astype(np.float64) for c in bn.inputs[1:])
        scale = gamma / np.sqrt(rv + bn.attrs.get("eps", 1e-5))
        bias = g.constants[b_name].astype(np.float64) if b_name is not None else np.zeros_like(rm)
        new_w = (w.astype(np.float64) * scale.reshape((-1,) + (1,) * (w.ndim - 1))).astype(w.dtype)
        new_b = ((bias - rm) * scale + beta).astype(w.dtype)
        p.inputs = [p.inputs[0], _add_constant(g, f"{w_name}.bn_folded", new_w),
                    _add_constant(g, f"{b_name or w_name + '.bias'}.bn_folded", new_b)]
        p.outputs = [bn.outputs[0]]
        del g.values[x]
        drop.add(id(bn))
        folded += 1
    g.nodes = [n for n in g.nodes if id(n) not in drop]
    return folded


# ---- 4. activation fusion ------------------------------------------------------------------------
def fuse_activations(g: Graph) -> int:
    """linear/conv2d (dynamic_quantized_linear) whose output feeds only a relu/gelu (relu): one fused op, activation
    applied in place (in its epilogue)."""
    users, prod = _users(g), _producers(g)
    drop, fused_n = set(), 0
    for act in g.nodes:
        if act.op not in _ACTS:
            continue
        x = act.inputs[0]
        p = prod.get(x)
        if p is None or users.get(x) != [act] or g.values[x].dtype not in ("float32", "float64"):
            continue
        if p.op == "dynamic_quantized_linear" and act.op == "relu":  # its dequantizing epilogue applies ReLU
            p.attrs = dict(p.attrs, relu=True)
        elif p.op in _FUSED:
            p.op = _FUSED[p.op]
            p.attrs = dict(p.attrs, act=_ACTS[act.op](act.attrs))
            p.version = get_op(p.op).version
        else:
            continue
        p.outputs = [act.outputs[0]]
        del g.values[x]
        drop.add(id(act))
        fused_n += 1
    g.nodes = [n for n in g.nodes if id(n) not in drop]
    return fused_n


# ---- 5. pooling fusion ---------------------------------------------------------------------------
_POOL_2X2 = {"kernel_size": (2, 2), "stride": (2, 2), "padding": (0, 0), "dilation": (1, 1), "ceil_mode": False}


def fuse_pooling(g: Graph) -> int:
    """conv2d or conv2d_act(relu) whose output feeds only a plain 2x2 max_pool2d (its indices unused):
    one ``conv2d_pool`` node."""
    users, prod = _users(g), _producers(g)
    drop, fused_n = set(), 0
    for pool in g.nodes:
        if pool.op != "max_pool2d" or users.get(pool.outputs[1]):
            continue
        attrs = {**get_op("max_pool2d").attrs, **pool.attrs}
        if any(tuple(attrs[k]) != v if isinstance(v, tuple) else attrs[k] != v for k, v in _POOL_2X2.items()):
            continue
        x = pool.inputs[0]
        p = prod.get(x)
        if p is None or users.get(x) != [pool] or g.values[x].dtype not in ("float32", "float64"):
            continue
        if p.op == "conv2d":
            act = "none"
        elif p.op == "conv2d_act" and p.attrs.get("act") == "relu":
            act = "relu"
        else:
            continue
        p.op = "conv2d_pool"
        p.attrs = dict({k: v for k, v in p.attrs.items() if k != "act"}, act=act)
        p.version = get_op(p.op).version
        p.outputs = [pool.outputs[0]]
        del g.values[x]
        g.values.pop(pool.outputs[1], None)
        drop.add(id(pool))
        fused_n += 1
    g.nodes = [n for n in g.nodes if id(n) not in drop]
    return fused_n


# ---- 6. dead code --------------------------------------------------------------------------------
def eliminate_dead_code(g: Graph) -> int:
    """Remove nodes, constants and values that no graph output depends on."""
    live = set(g.outputs)
    kept = []
    for n in reversed(g.nodes):
        if any(o in live for o in n.outputs):
            kept.append(n)
            live.update(n.inputs)
            live.update(_sym_refs(n.attrs))
    removed = len(g.nodes) - len(kept)
    g.nodes = kept[::-1]
    g.constants = {k: v for k, v in g.constants.items() if k in live}
    defined = set(g.inputs) | set(g.constants) | {o for n in g.nodes for o in n.outputs}
    g.values = {k: v for k, v in g.values.items() if k in defined}
    return removed
