"""Indexing against PyTorch: getitem/setitem (basic, advanced, masks), select, masked_fill, nonzero."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ember
from ember.ops.index import encode_index

from .oracle import check_against_torch, gradcheck

RNG = np.random.default_rng(1)


def rnd(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def both(np_index):
    """The same index for ember (ember int/bool tensors) and torch (torch tensors)."""
    if not isinstance(np_index, tuple):
        np_index = (np_index,)
    e = tuple(ember.from_numpy(i) if isinstance(i, np.ndarray) else i for i in np_index)
    t = tuple(torch.from_numpy(i) if isinstance(i, np.ndarray) else i for i in np_index)
    return e, t


I = np.array
GETITEM_CASES = [
    ("int", 1),
    ("neg_int", -1),
    ("two_ints", (1, -2)),
    ("slice", slice(1, None)),
    ("slice_step", (slice(None), slice(0, 5, 2))),
    ("slice_clamped", (slice(-10, 10), slice(3, 1))),
    ("none_ellipsis", (None, Ellipsis, 1)),
    ("ellipsis_mid", (0, Ellipsis, None, slice(1, 3))),
    ("int_tensor", I([2, 0, 2])),
    ("int_tensor_2d", I([[0, 1], [2, 2]])),
    ("int_tensor_neg", (slice(None), I([-1, 0, -1]))),
    ("int_tensor_dim1", (slice(None), I([3, 1]), slice(1, 3))),
    ("adv_pair", (I([0, 2]), I([1, 3]))),
    ("adv_separated", (I([0, 2]), slice(None), I([1, 4]))),
    ("adv_broadcast", (I([[0], [2]]), slice(None), I([1, 4, 0]))),
    ("adv_with_int", (1, I([0, 3, 3]))),
    ("adv_with_none", (None, I([1, 1]), Ellipsis)),
    ("mask_full", "MASK3"),
    ("mask_leading", "MASK2"),
    ("mask_dim1", (slice(None), I([True, False, True, True]))),
    ("mask_and_int", (I([True, False, True]), I([0, 3]))),
    ("scalar_int_tensor", I(2)),
    ("list", [0, 2, 0]),
    ("list_bool", [True, False, True]),
    ("python_bool", True),
]


def _resolve(idx, x):
    if not isinstance(idx, str):
        return idx
    if idx == "MASK3":
        return x > 0
    if idx == "MASK2":
        return I([[True, False, True, False], [False, False, True, True], [True, True, True, False]])
    return idx


@pytest.mark.parametrize("name,idx", GETITEM_CASES, ids=[c[0] for c in GETITEM_CASES])
def test_getitem_matches_torch_with_grad(name, idx):
    a = rnd(3, 4, 5)
    idx = _resolve(idx, a)
    if isinstance(idx, list):
        check_against_torch(lambda x: x[idx], lambda x: x[idx], [a])
        return
    e_idx, t_idx = both(idx)
    check_against_torch(lambda x: x[e_idx], lambda x: x[t_idx], [a])


@pytest.mark.parametrize("idx", [(I([0, 2, 0, 0]), slice(1, 3)), (slice(None), I([[1, 1], [1, 2]])),
                                 (I([1, 1]), I([0, 0])), "MASK2", (Ellipsis, I([4, 4, 0]))])
def test_getitem_gradcheck_duplicates(idx):
    a = rnd(3, 4, 5, dtype=np.float64)
    e_idx, _ = both(_resolve(idx, a))
    gradcheck(lambda x: x[e_idx], [a])
    gradcheck(lambda x: x[1:, ::2][0], [a])


def test_row_scatter_fast_path_float32_and_float64():
    # x[idx] with one integer tensor and full slices takes the index_add kernel in the gradient
    for dtype in (np.float32, np.float64):
        w = rnd(7, 5, dtype=dtype)
        ids = RNG.integers(-7, 7, size=(4, 6))
        check_against_torch(lambda x: x[ember.from_numpy(ids)], lambda x: x[torch.from_numpy(ids)], [w])
        check_against_torch(lambda x: x[..., ember.from_numpy(ids[0] % 5)], lambda x: x[..., torch.from_numpy(ids[0] % 5)], [w])


def test_encoding_is_plain_data():
    items, tensors = encode_index((1, slice(None, 5, 2), None, Ellipsis, ember.tensor([0, 1]), [True, False]))
    assert items == (1, (None, 5, 2), None, "...", "tensor", "tensor")
    assert [t.dtype for t in tensors] == [ember.int64, ember.bool]


def test_basic_getitem_is_view_sharing_version():
    x = ember.tensor(rnd(3, 4))
    y = x[1]
    assert np.shares_memory(y.numpy(), x.numpy())
    y[0] = 5.0
    assert x.numpy()[1, 0] == 5.0 and x._version == 1


@settings(deadline=None, max_examples=25)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), data=st.data())
def test_basic_slices_hypothesis(shape, data):
    idx = []
    for n in shape:
        kind = data.draw(st.sampled_from(["int", "slice", "full"]))
        if kind == "int":
            idx.append(data.draw(st.integers(-n, n - 1)))
        elif kind == "slice":
            idx.append(slice(data.draw(st.integers(-n - 1, n + 1)), data.draw(st.integers(-n - 1, n + 1)),
                             data.draw(st.integers(1, 3))))
        else:
            idx.append(slice(None))
    idx = tuple(idx)
    strided = data.draw(st.booleans())

    def fn(x):  # when strided, index a non-contiguous view (every other element of the last dim)
        return (x[..., ::2] if strided else x)[idx]

    check_against_torch(fn, fn, [rnd(*shape[:-1], 2 * shape[-1]) if strided else rnd(*shape)])


def test_getitem_errors():
    x = ember.zeros(3, 4)
    with pytest.raises(IndexError, match="index 5 is out of bounds for dimension 0 with size 3"):
        x[5]
    with pytest.raises(IndexError, match="index -4 is out of bounds for dimension 0 with size 3"):
        x[-4]
    with pytest.raises(IndexError, match="index 7 is out of bounds for dimension 1 with size 4"):
        x[:, 7]
    with pytest.raises(IndexError, match="index 5 is out of bounds for dimension 0 with size 3"):
        x[ember.tensor([0, 5])]
    with pytest.raises(IndexError, match="index 4 is out of bounds for dimension 1 with size 4"):
        x[[0, 1], [4, 0]]
    with pytest.raises(ValueError, match="step must be greater than zero"):
        x[::-1]
    with pytest.raises(IndexError, match=r"the shape of the mask \(3, 3\) at index 0 does not match the shape \(3, 4\)"):
        x[ember.zeros(3, 3, dtype=ember.bool)]
    with pytest.raises(IndexError, match=r"the shape of the mask \(5,\) at index 1 does not match the shape \(4,\)"):
        x[:, ember.zeros(5, dtype=ember.bool)]
    with pytest.raises(IndexError, match="too many indices for tensor of dimension 2"):
        x[0, 0, 0]
    with pytest.raises(IndexError, match="tensors used as indices must be long, int, byte or bool tensors"):
        x[ember.tensor([0.5])]
    with pytest.raises(IndexError, match="invalid index of a 0-dim tensor"):
        ember.from_numpy(np.array(1.0, np.float32))[0]
    with pytest.raises(IndexError, match="single ellipsis"):
        x[..., ..., 0]
    with pytest.raises(IndexError, match="only integers, slices"):
        x["a"]


def test_iteration_select_unbind():
    x = ember.tensor(rnd(3, 2))
    rows = list(x)
    assert len(rows) == 3 and all(np.array_equal(r.numpy(), x.numpy()[i]) for i, r in enumerate(rows))
    with pytest.raises(TypeError, match="iteration over a 0-d tensor"):
        iter(ember.from_numpy(np.array(1.0, np.float32)))
    check_against_torch(lambda t: t.select(1, -1), lambda t: t.select(1, -1), [rnd(3, 2, 4)])
    check_against_torch(lambda t: ember.select(t, 0, 2), lambda t: torch.select(t, 0, 2), [rnd(3, 2, 4)])
    with pytest.raises(IndexError, match="select: index 3 is out of bounds for dimension 0 with size 3"):
        x.select(0, 3)


# ---- setitem ------------------------------------------------------------------------------------------

SET_CASES = [
    ("int_scalar", 1, 2.5),
    ("slice_row", (slice(None), 1), "ROW3"),
    ("block_broadcast", (slice(0, 2), slice(1, 3)), "ROW2"),
    ("int_array", I([0, 2]), "FULL2x4"),
    ("mask", "MASK", 0.0),
    ("adv_pair", (I([0, 2]), I([1, 3])), "ROW2"),
    ("ellipsis_none", (Ellipsis, None, 0), "ROW3_1"),
]


def _value(v):
    return {"ROW3": rnd(3), "ROW2": rnd(2), "FULL2x4": rnd(2, 4), "ROW3_1": rnd(3, 1)}.get(v, v) if isinstance(v, str) else v


@pytest.mark.parametrize("name,idx,val", SET_CASES, ids=[c[0] for c in SET_CASES])
def test_setitem_no_grad_and_non_leaf_grad(name, idx, val):
    a = rnd(3, 4)
    idx = (a > 0) if isinstance(idx, str) else idx
    val = _value(val)
    e_idx, t_idx = both(idx)
    # plain tensor, in place
    et, tt = ember.tensor(a.copy()), torch.tensor(a.copy())
    ev = ember.tensor(val) if isinstance(val, np.ndarray) else val
    tv = torch.tensor(val) if isinstance(val, np.ndarray) else val
    et[e_idx] = ev
    tt[t_idx] = tv
    np.testing.assert_allclose(et.numpy(), tt.numpy())
    assert et._version == 1

    # non-leaf requiring grad (and the value, when it is a tensor): gradients to the untouched part and the value
    def make(index):
        def fn(x, v=val):
            y = x * 2.0
            y[index] = v
            return y
        return fn

    arrays = [a, val] if isinstance(val, np.ndarray) else [a]
    check_against_torch(make(e_idx), make(t_idx), arrays)
    gradcheck(make(e_idx), [arr.astype(np.float64) for arr in arrays])


def test_setitem_value_with_grad_into_plain_tensor():
    wa, g = rnd(2), rnd(3, 2)
    w, tw = ember.tensor(wa, requires_grad=True), torch.tensor(wa, requires_grad=True)
    x, tx = ember.zeros(3, 2), torch.zeros(3, 2)
    x[1] = w * 2.0
    tx[1] = tw * 2.0
    assert x.requires_grad and x.grad_fn is not None and not x.is_leaf
    (x * ember.tensor(g)).sum().backward()
    (tx * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(x.detach().numpy(), tx.detach().numpy())
    np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy())


def test_setitem_cast_broadcast_and_errors():
    x = ember.zeros(2, 3, dtype=ember.int64)
    x[0] = 2.7  # cast like torch (truncates)
    x[1] = ember.tensor([1.9, 2.0, 3.5])
    np.testing.assert_array_equal(x.numpy(), [[2, 2, 2], [1, 2, 3]])
    y = ember.zeros(2, 4)
    with pytest.raises(RuntimeError, match=r"shape mismatch: value tensor of shape \(3,\) cannot be broadcast to indexing "
                                           r"result of shape \(2, 4\)"):
        y[0:2] = ember.ones(3)
    leaf = ember.zeros(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="a leaf Variable that requires grad is being used in an in-place operation"):
        leaf[0] = 1.0
    with ember.no_grad():
        leaf[0] = 1.0
    assert leaf.numpy(force=True)[0] == 1.0
    with pytest.raises(RuntimeError, match="read-only"):
        ember.zeros(1, 3).expand(2, 3)[0] = 1.0
    with pytest.raises(IndexError, match="index 3 is out of bounds for dimension 0 with size 3"):
        ember.zeros(3)[3] = 1.0


def test_augmented_assignment_on_slice():
    def fn(x):
        y = x * 3.0
        y[:, 1] += 1.0  # getitem view, in-place add through it, then setitem
        y[0] *= 2.0
        return y

    check_against_torch(fn, fn, [rnd(3, 4)])

    def saved_then_modified(x):
        y = x * 2.0
        z = y * y  # saves y
        y[:, 1] += 1.0
        return z

    with pytest.raises(RuntimeError, match="modified by an in-place operation"):
        saved_then_modified(ember.tensor(rnd(3, 4), requires_grad=True)).sum().backward()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        saved_then_modified(torch.tensor(rnd(3, 4), requires_grad=True)).sum().backward()


# ---- masked_fill / masked_select / nonzero ------------------------------------------------------------

def test_masked_fill():
    a, m = rnd(3, 4), RNG.random((3, 4)) > 0.5
    check_against_torch(lambda x, mm: x.masked_fill(mm, -1.5), lambda x, mm: x.masked_fill(mm, -1.5), [a, m])
    mrow = RNG.random((1, 4)) > 0.5
    check_against_torch(lambda x, mm: ember.masked_fill(x, mm, 0.0), lambda x, mm: torch.masked_fill(x, mm, 0.0), [a, mrow])
    v = np.array(2.0, np.float32)

    def e_fn(x, mm, vv):
        return x.masked_fill(mm, vv.reshape(()))

    check_against_torch(e_fn, lambda x, mm, vv: x.masked_fill(mm, vv.reshape(())), [a, m, v.reshape(1)])
    gradcheck(lambda x, vv: x.masked_fill(ember.from_numpy(m), vv.reshape(())), [a.astype(np.float64), v.reshape(1).astype(np.float64)])


def test_masked_fill_inplace_and_errors():
    a, m = rnd(3, 4), RNG.random((3, 4)) > 0.5

    def fn(x, mm):
        y = x * 1.0
        y.masked_fill_(mm, 3.0)
        return y

    check_against_torch(fn, fn, [a, m])
    x = ember.tensor([1, 2, 3])
    x.masked_fill_(ember.tensor([True, False, True]), 0)
    np.testing.assert_array_equal(x.numpy(), [0, 2, 0])
    with pytest.raises(RuntimeError, match="masked_fill: only supports boolean masks, but got mask with dtype ember.float32"):
        ember.zeros(3, 4).masked_fill(ember.zeros(3, 4), 1.0)
    with pytest.raises(RuntimeError, match=r"masked_fill: shapes \(3, 4\) and \(3, 5\) are not broadcastable"):
        ember.zeros(3, 4).masked_fill(ember.zeros(3, 5, dtype=ember.bool), 1.0)
    with pytest.raises(RuntimeError, match="only supports a 0-dimensional value tensor, but got tensor with 1 dimension"):
        ember.zeros(3, 4).masked_fill(ember.zeros(3, 4, dtype=ember.bool), ember.tensor([1.0, 2.0]))


def test_masked_select_nonzero():
    a = rnd(3, 4)
    m = RNG.random((1, 4)) > 0.5
    check_against_torch(lambda x, mm: x.masked_select(mm), lambda x, mm: x.masked_select(mm), [a, m])
    b = (RNG.random((3, 4)) > 0.5) * RNG.integers(1, 5, (3, 4))
    check_against_torch(lambda x: x.nonzero(), lambda x: x.nonzero(), [b])
    check_against_torch(lambda x: ember.nonzero(x, as_tuple=True), lambda x: torch.nonzero(x, as_tuple=True), [b])
    check_against_torch(lambda x: ember.argwhere(x), lambda x: torch.argwhere(x), [b])


def test_recorded_attrs_survive_json_and_rerun():
    """Every op recorded through the trace hook re-runs from JSON-decoded attributes (what the tracer stores)."""
    import json

    from ember.ops.join import pad
    from ember.ops.registry import set_trace_hook

    calls = []
    prev = set_trace_hook(lambda op, ins, attrs, outs: calls.append((op, [t._data for t in ins], attrs, outs)))
    try:
        x = ember.tensor(rnd(3, 4, 5))
        x[1, ..., None, 1:4:2]
        x[ember.tensor([0, 2]), :, ember.tensor([[1], [4]])]
        x[x > 0]
        x.gather(2, ember.tensor(RNG.integers(0, 5, (3, 4, 2))))
        x.index_select(1, ember.tensor([3, 3]))
        ember.cat([x, x], 1).split([2, 3], 2)
        pad(x, (1, 2, -1, 0), mode="replicate")
        x.flip(0, 2).repeat(1, 2, 1).movedim(0, -1)
    finally:
        set_trace_hook(prev)
    assert len(calls) >= 10
    for op, arrays, attrs, outs in calls:
        decoded = json.loads(json.dumps(attrs))
        again = op.kernels["cpu"](*arrays, **decoded)
        again = again if isinstance(again, tuple) else (again,)
        for a, o in zip(again, outs):
            np.testing.assert_array_equal(np.asarray(a), o.numpy(), err_msg=op.name)
