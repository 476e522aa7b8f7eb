"""``trace``: run a model once and record its primitive ops as a Graph with symbolic dims.

See docs/serialize-design.md. Symbolic dims are ``SymInt``s: ints (holding the example's size, so
eager code keeps working) whose arithmetic is recorded as ``sym_arith`` nodes; every op's output
shape is its registry shape rule evaluated on the symbolic input shapes, so ``x.reshape(x.shape[0],
-1)`` records a reshape whose target refers to the run-time batch size. Anything the graph could
not reproduce is refused with a ``TraceError`` naming the user's file and line.
"""
from __future__ import annotations

import inspect
import os
import traceback

import numpy as np

import ember
from ember import _hooks
from ember.autograd.grad_mode import no_grad
from ember.ops import registry

from .graph_edit import eliminate_dead_code, name_outputs, renumber
from .ir import Graph, Node, Sym

_OWN_DIRS = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep for m in (ember, inspect.getmodule(Graph)))
_ARITH_SYMBOL = {"add": "+", "sub": "-", "mul": "*", "floordiv": "//", "mod": "%"}
_ARITH = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
          "floordiv": lambda a, b: a // b, "mod": lambda a, b: a % b}


class TraceError(RuntimeError):
    """The model does something a graph cannot capture faithfully; the message says where."""


def _where() -> str:
    """The innermost stack frame outside ember: the user's line that caused the problem."""
    for fr in reversed(traceback.extract_stack()[:-2]):
        if not os.path.abspath(fr.filename).startswith(_OWN_DIRS):
            return f"{fr.filename}:{fr.lineno}" + (f": `{fr.line.strip()}`" if fr.line else "")
    return "<unknown location>"


class SymInt(int):
    """A symbolic size: an int with the example's value, whose arithmetic records graph nodes."""

    def __new__(cls, value, session, name, expr, mono=None):
        obj = int.__new__(cls, value)
        obj._session, obj._name, obj._expr = session, name, expr
        obj._mono = mono  # (coefficient, sorted symbol names) when the size is a monomial, else None
        return obj

    def _arith(self, other, kind, reverse):
        if isinstance(other, bool) or not isinstance(other, int):
            return NotImplemented
        return self._session.arith(self, other, kind, reverse)

    def __add__(self, o): return self._arith(o, "add", False)  # noqa: E704
    def __radd__(self, o): return self._arith(o, "add", True)  # noqa: E704
    def __sub__(self, o): return self._arith(o, "sub", False)  # noqa: E704
    def __rsub__(self, o): return self._arith(o, "sub", True)  # noqa: E704
    def __mul__(self, o): return self._arith(o, "mul", False)  # noqa: E704
    def __rmul__(self, o): return self._arith(o, "mul", True)  # noqa: E704
    def __floordiv__(self, o): return self._arith(o, "floordiv", False)  # noqa: E704
    def __rfloordiv__(self, o): return self._arith(o, "floordiv", True)  # noqa: E704
    def __mod__(self, o): return self._arith(o, "mod", False)  # noqa: E704
    def __rmod__(self, o): return self._arith(o, "mod", True)  # noqa: E704

    def __neg__(self):
        return self._session.arith(self, 0, "sub", True)

    __hash__ = int.__hash__

    def __repr__(self):
        return f"SymInt({self._expr}={int(self)})"


def _mono_arith(a, b, kind):
    """``a kind b`` on monomials ``(coefficient, sorted symbols)`` when the result is one too (sizes are
    positive, so ``batch*8 // batch`` is exactly 8), else None."""
    if a is None or b is None:
        return None
    (ca, sa), (cb, sb) = a, b
    if kind == "mul":
        return (0, ()) if 0 in (ca, cb) else (ca * cb, tuple(sorted(sa + sb)))
    if kind in ("add", "sub"):
        if sa == sb or ca == 0 or cb == 0:
            c = ca + cb if kind == "add" else ca - cb
            syms = sa if ca else sb
            return (0, ()) if c == 0 else (c, syms)
        return None
    rest = list(sa)  # floordiv / mod: exact when b's symbols divide a's and the coefficients divide
    for s in sb:
        if s not in rest:
            return None
        rest.remove(s)
    if cb == 0 or ca % cb:
        return None
    return (ca // cb, tuple(rest)) if kind == "floordiv" else (0, ())


def _mono_expr(mono):
    c, syms = mono
    return "*".join(list(syms) + ([str(c)] if c != 1 else [])) if syms else str(c)


class _Session:
    """The state of one trace: value names of live tensors, their symbolic shapes, the graph."""

    def __init__(self, model):
        self.graph = Graph()
        self.names = {}  # id(tensor) -> value name
        self.sym_shapes = {}  # id(tensor) -> shape tuple with SymInts
        # id(array) -> (value name, shape): another Tensor object over the same array (detach(), .data) is the
        # same graph value, not a constant
        self.arrays = {}
        self.monos = {}  # (coefficient, symbols) -> the SymInt computed for that monomial
        self.keep = []  # every tensor seen, so ids stay unique while tracing
        self.inputs = set()
        self.params = {}
        self._n = 0
        if isinstance(model, ember.nn.Module):
            for name, t in list(model.named_parameters()) + list(model.named_buffers()):
                self.params.setdefault(id(t), name)

    def fresh(self, prefix="v"):
        self._n += 1
        while f"{prefix}{self._n}" in self.graph.values:  # an input may be called "v1"
            self._n += 1
        return f"{prefix}{self._n}"

    # ---- values ------------------------------------------------------------------------
    def resolve(self, t):
        """The value name of tensor ``t``, also when ``t`` is a new Tensor object over a bound array."""
        name = self.names.get(id(t))
        if name is None:
            hit = self.arrays.get(id(t._data))
            if hit is not None:
                self._bind(t, *hit)
                name = hit[0]
        return name

    def value_of(self, t):
        name = self.resolve(t)
        if name is not None:
            return name
        base = self.params.get(id(t))
        name = base if base is not None and base not in self.graph.values else self.fresh("c")
        data = t._host()  # a CUDA model's parameters become host constants (a Program is placed by Program.to)
        arr = np.asarray(data, order="C") if base is not None else np.array(data, copy=True, order="C")
        self.graph.add_value(name, t.dtype.name, arr.shape)
        self.graph.constants[name] = arr
        self._bind(t, name, None)
        return name

    def _bind(self, t, name, shape):
        self.names[id(t)] = name
        if shape is not None and any(type(d) is SymInt for d in shape):
            self.sym_shapes[id(t)] = tuple(shape)
        else:
            self.sym_shapes.pop(id(t), None)
        self.arrays[id(t._data)] = (name, shape)
        self.keep.append(t)

    def is_traced(self, t) -> bool:
        name = self.resolve(t)
        return name is not None and name not in self.graph.constants

    # ---- symbolic arithmetic -----------------------------------------------------------
    def arith(self, a, b, kind, reverse):
        ia, ib = int(a), int(b)
        value = _ARITH[kind](ib, ia) if reverse else _ARITH[kind](ia, ib)
        mb = b._mono if type(b) is SymInt else (ib, ())
        mono = _mono_arith(mb, a._mono, kind) if reverse else _mono_arith(a._mono, mb, kind)
        if mono is not None:
            if not mono[1]:  # provably the same at every size (batch*8 // batch): a plain int, no node
                assert mono[0] == value, (mono, value)
                return mono[0]
            known = self.monos.get(mono)
            if known is not None:  # the same monomial was computed before: reuse its value
                return known
        if type(b) is not SymInt:
            if (kind in ("add", "sub") and ib == 0 and not reverse) or (kind in ("mul", "floordiv") and ib == 1 and not
                                                                        (reverse and kind == "floordiv")):
                return a
            inputs, attrs = [a._name], {"kind": kind, "const": ib, "reverse": reverse}
            other = str(ib)
        else:
            inputs, attrs = ([b._name, a._name] if reverse else [a._name, b._name]), {"kind": kind}
            other = b._expr
        left, right = (other, a._expr) if reverse else (a._expr, other)
        name = self.fresh("s")
        self.graph.add_value(name, "int64", ())
        self.graph.nodes.append(Node("sym_arith", inputs, [name], attrs, registry.get_op("sym_arith").version))
        expr = _mono_expr(mono) if mono is not None else f"({left}{_ARITH_SYMBOL[kind]}{right})"
        out = SymInt(value, self, name, expr, mono)
        if mono is not None:
            self.monos[mono] = out
        return out

    def size_of(self, input_name, t, dim, symbol):
        name = f"{input_name}_size{dim}"
        self.graph.add_value(name, "int64", ())
        self.graph.nodes.append(Node("sym_size", [input_name], [name], {"dim": dim}))
        mono = (1, (symbol,))
        out = SymInt(t._data.shape[dim], self, name, symbol, mono)
        self.monos.setdefault(mono, out)
        return out

    # ---- hooks ---------------------------------------------------------------------------
    def on_op(self, op, inputs, attrs, outs):
        in_names = [self.value_of(t) for t in inputs]
        if op.shape is None:
            raise TraceError(f"{op.name}: its output shape depends on the data, which a graph cannot capture "
                             f"(at {_where()}); use a fixed-shape formulation (e.g. where/masked_fill)")
        shapes = op.shape(*[self.sym_shapes.get(id(t), t._data.shape) for t in inputs], **attrs)
        shapes = shapes if op.n_outputs > 1 else (shapes,)
        out_names = []
        for o, shape in zip(outs, shapes):
            name = self.fresh()
            self.graph.add_value(name, o.dtype.name, tuple(_dim_ir(d) for d in shape))
            self._bind(o, name, shape)
            out_names.append(name)
        self.graph.nodes.append(Node(op.name, in_names, out_names, _attrs_ir(attrs), op.version))

    def on_shape(self, t):
        if id(t) not in self.names:
            self.resolve(t)
        return self.sym_shapes.get(id(t))

    def on_concrete(self, t, what):
        if self.is_traced(t):
            raise TraceError(f"{what} on a tensor computed from the model's inputs (at {_where()}): its value would "
                             f"be baked into the graph, so data-dependent Python control flow cannot be traced; "
                             f"use tensor ops (ember.where, masked_fill, clamp ...) instead")

    def on_inplace(self, t, new):
        name = self.resolve(t)
        if id(t) in self.inputs:
            raise TraceError(f"in-place modification of graph input {name!r} (at {_where()}); clone() it first")
        if id(t) in self.params:
            raise TraceError(f"in-place modification of parameter/buffer {self.params[id(t)]!r} during forward "
                             f"(at {_where()}); a traced graph cannot update state")
        self._bind(t, self.names[id(new)], self.sym_shapes.get(id(new), new._data.shape))

    def on_setitem(self, t, items, value, tensors):
        """``t[index] = value``: on a tensor the graph computes, record a functional index_put and
        let ``t`` stand for its result from here on (the eager write still happens)."""
        if id(t) in self.inputs or id(t) in self.params:
            what = "graph input" if id(t) in self.inputs else "parameter/buffer"
            raise TraceError(f"item assignment into {what} {self.names.get(id(t)) or self.params.get(id(t))!r} "
                             f"(at {_where()}); clone() it first")
        name = self.resolve(t)
        if name is None:
            return  # a tensor not used by the graph yet: a constant being built
        if name in self.graph.constants:
            del self.names[id(t)]  # the graph keeps the old value; later uses register the new one
            self.arrays.pop(id(t._data), None)
            return
        if value.dtype != t.dtype:
            value = value.to(t.dtype)
        out = registry.apply("index_put", t, value, *tensors, index=items)
        self._bind(t, self.names[id(out)], self.sym_shapes.get(id(out), out._data.shape))

    def on_factory(self, name, args, kw):
        if name in ("rand", "randn", "randint"):
            raise TraceError(f"ember.{name} with a symbolic size inside a traced model (at {_where()}): random "
                             f"values cannot be captured in a graph")
        if name == "arange":
            start, end, step = args
            if end is None:
                start, end = 0, start
            dtype = kw.get("dtype") or ("int64" if all(isinstance(v, int) for v in (start, end, step)) else "float32")
            return registry.apply("arange", start=start, end=end, step=step, dtype=ember.dtypes.as_dtype(dtype).name)
        size, value = (args, 0.0) if name != "full" else args
        if name == "full":
            size = size if isinstance(size, (tuple, list)) else (size,)
        elif len(size) == 1 and isinstance(size[0], (tuple, list)):
            size = size[0]
        value = 1.0 if name == "ones" else value
        dtype = kw.get("dtype") or (ember.dtypes.scalar_dtype(value) if name == "full" else ember.float32)
        return registry.apply("full", shape=tuple(size), value=value, dtype=ember.dtypes.as_dtype(dtype).name)


def _dim_ir(d):
    return d._expr if type(d) is SymInt else int(d)


def _attrs_ir(obj):
    if type(obj) is SymInt:
        return Sym(obj._name)
    if isinstance(obj, dict):
        return {k: _attrs_ir(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return tuple(_attrs_ir(v) for v in obj)
    return obj


def trace(model, example_inputs, dynamic_axes=None, input_names=None, output_names=None, metadata=None,
          check=True):
    """Capture ``model`` (an ``nn.Module`` or a function of tensors) as a ``Program``.

    The model runs once on ``example_inputs`` (a tensor or a tuple of tensors) in eval mode without
    autograd, so training-only behaviour (dropout, batch-norm statistics updates) is not recorded.
    Dim 0 of every input is the symbol ``"batch"``; ``dynamic_axes`` (ONNX style,
    ``{"x": {0: "batch", 2: "seq"}}``) names others; ``{"x": None}`` fixes every dim of ``x``. With ``check`` the graph is run on the example
    and on a batch one larger, and must reproduce the eager outputs.
    """
    from .program import Program

    inputs = (example_inputs,) if isinstance(example_inputs, ember.Tensor) else tuple(example_inputs)
    for i, t in enumerate(inputs):
        if not isinstance(t, ember.Tensor):
            raise TypeError(f"trace: example input {i} is a {type(t).__name__}; pass ember Tensors")
    # private copies: a model that writes into its input must not change the caller's tensors
    inputs = tuple(t.detach().clone() if t.is_cuda else ember.from_numpy(np.array(t._data, copy=True)) for t in inputs)
    names = list(input_names) if input_names else _default_input_names(model, len(inputs))
    if len(names) != len(inputs):
        raise ValueError(f"trace: {len(inputs)} example inputs but {len(names)} input names")
    axes = _input_axes(names, inputs, dynamic_axes)

    sess = _Session(model)
    symbols = {}
    for name, t in zip(names, inputs):
        sess.graph.add_value(name, t.dtype.name, tuple(axes[name].get(d, n) for d, n in enumerate(t._data.shape)))
        sess.graph.inputs.append(name)
        shape = []
        for d, n in enumerate(t._data.shape):
            sym = axes[name].get(d)
            if sym is None:
                shape.append(n)
            elif sym in symbols:
                shape.append(symbols[sym])
            else:
                symbols[sym] = sess.size_of(name, t, d, sym)
                shape.append(symbols[sym])
        sess._bind(t, name, shape)
        sess.inputs.add(id(t))

    was_training = getattr(model, "training", None)
    if was_training:
        model.eval()
    saved = (registry.get_trace_hook(), _hooks.shape, _hooks.concrete, _hooks.inplace, _hooks.setitem, _hooks.factory)
    registry.set_trace_hook(sess.on_op)
    _hooks.shape, _hooks.concrete, _hooks.inplace = sess.on_shape, sess.on_concrete, sess.on_inplace
    _hooks.setitem, _hooks.factory = sess.on_setitem, sess.on_factory
    try:
        with no_grad():
            out = model(*inputs)
        outs = (out,) if isinstance(out, ember.Tensor) else tuple(out)
        if not outs or not all(isinstance(o, ember.Tensor) for o in outs):
            raise TraceError("trace: the model must return a tensor or a tuple/list of tensors")
        out_values = [sess.value_of(o) for o in outs]
    finally:
        registry.set_trace_hook(saved[0])
        _hooks.shape, _hooks.concrete, _hooks.inplace, _hooks.setitem, _hooks.factory = saved[1:]
        if was_training:
            model.train()

    graph = sess.graph
    onames = list(output_names) if output_names else [f"output{i}" if len(outs) > 1 else "output" for i in range(len(outs))]
    if len(onames) != len(outs):
        raise ValueError(f"trace: the model returned {len(outs)} outputs but {len(onames)} output names were given")
    name_outputs(graph, out_values, onames)
    eliminate_dead_code(graph)
    renumber(graph)
    prog = Program(graph, metadata=metadata, device=inputs[0].device if inputs else "cpu")
    if check:
        if was_training:
            model.eval()
        try:
            _check(model, prog, inputs, outs, axes)
        finally:
            if was_training:
                model.train()
    return prog


def _default_input_names(model, n):
    fn = model.forward if isinstance(model, ember.nn.Module) else model
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    if len(params) >= n:
        return [p.name for p in params[:n]]
    return [f"input{i}" for i in range(n)] if n > 1 else ["input"]


def _input_axes(names, inputs, dynamic_axes):
    # dim 0 is "batch" for every input whose dim 0 matches the first input's; an input with another
    # leading size gets a symbol of its own, since one symbol stands for one size
    first = next((t._data.shape[0] for t in inputs if t.ndim > 0), None)
    axes = {name: ({} if t.ndim == 0 else {0: "batch" if t._data.shape[0] == first else f"{name}_dim0"})
            for name, t in zip(names, inputs)}
    for name, spec in (dynamic_axes or {}).items():
        if name not in axes:
            continue  # output names may be listed too (ONNX style); outputs follow from the graph
        if spec is None:  # every dim of this input fixed to the example's size
            axes[name] = {}
            continue
        if isinstance(spec, (list, tuple)):
            spec = {int(d): f"{name}_dim{d}" for d in spec}
        for d, sym in spec.items():
            if not 0 <= int(d) < inputs[names.index(name)].ndim:
                raise ValueError(f"trace: dynamic_axes[{name!r}] names dim {d}, but the input has "
                                 f"{inputs[names.index(name)].ndim} dims")
            axes[name][int(d)] = str(sym)
    return axes


def _check(model, prog, inputs, outs, axes):
    """The graph must reproduce the eager outputs on the example, and on a batch one larger."""
    got = prog(*inputs)
    got = (got,) if isinstance(got, ember.Tensor) else got
    for i, (g, e) in enumerate(zip(got, outs)):
        if g.shape != e._data.shape or not np.allclose(g._host(), e._host(), rtol=1e-5, atol=1e-6, equal_nan=True):
            raise TraceError(f"trace check: the graph's output {i} differs from the model's on the example inputs "
                             f"(in-place updates through views are a common cause)")
    batched = [i for i, (name, t) in enumerate(zip(prog.graph.inputs, inputs)) if axes[name].get(0) == "batch"]
    if not batched or any(inputs[i]._data.shape[0] == 0 for i in batched):
        return
    bigger = [ember.from_numpy(np.concatenate([t._host(), t._host()[:1]])).to(t.device) if i in batched else t
              for i, t in enumerate(inputs)]
    with no_grad():
        eager = model(*bigger)
    eager = (eager,) if isinstance(eager, ember.Tensor) else tuple(eager)
    got = prog(*bigger)
    got = (got,) if isinstance(got, ember.Tensor) else got
    for i, (g, e) in enumerate(zip(got, eager)):
        if g.shape != e._data.shape or not np.allclose(g._host(), e._host(), rtol=1e-4, atol=1e-5, equal_nan=True):
            raise TraceError(
                f"trace check: at batch size {bigger[batched[0]]._data.shape[0]} the graph's output {i} "
                f"(shape {g.shape}) differs from the model's (shape {e._data.shape}): the model computes something "
                f"from the example's batch size that the tracer could not see (e.g. a size read through numpy or "
                f"converted with int()); trace with dynamic_axes or keep sizes as x.shape[...] arithmetic")
