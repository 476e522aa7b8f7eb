"""Shape ops against PyTorch: views, cat/stack/split, pad; gradients; error messages."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import ember
from ember.ops.join import pad as epad

from .oracle import check_against_torch, gradcheck

RNG = np.random.default_rng(0)


def rnd(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


# ---- views ------------------------------------------------------------------------------------------

VIEW_CASES = [
    ("reshape", lambda x: x.reshape(4, -1), (2, 3, 4)),
    ("view", lambda x: x.view(-1), (2, 3, 4)),
    ("permute", lambda x: x.permute(2, 0, 1), (2, 3, 4)),
    ("transpose", lambda x: x.transpose(0, -1), (2, 3, 4)),
    ("T", lambda x: x.T, (3, 4)),
    ("mT", lambda x: x.mT, (2, 3, 4)),
    ("expand", lambda x: x.expand(2, 3, 4), (3, 1)),
    ("expand_neg", lambda x: x.expand(5, -1, 4), (3, 1)),
    ("flatten", lambda x: x.flatten(), (2, 3, 4)),
    ("flatten_mid", lambda x: x.flatten(1, 2), (2, 3, 4, 5)),
    ("flatten_neg", lambda x: x.flatten(-3, -2), (2, 3, 4, 5)),
    ("unflatten", lambda x: x.unflatten(1, (2, -1)), (3, 8)),
    ("squeeze_all", lambda x: x.squeeze(), (1, 3, 1, 2)),
    ("squeeze_dim", lambda x: x.squeeze(2), (1, 3, 1, 2)),
    ("squeeze_non1", lambda x: x.squeeze(1), (1, 3, 1, 2)),
    ("squeeze_tuple", lambda x: x.squeeze((0, 2, 3)), (1, 3, 1, 2)),
    ("unsqueeze", lambda x: x.unsqueeze(1), (3, 2)),
    ("unsqueeze_neg", lambda x: x.unsqueeze(-1), (3, 2)),
    ("movedim", lambda x: x.movedim(0, -1), (2, 3, 4)),
    ("movedim_multi", lambda x: x.movedim((0, 1), (2, 0)), (2, 3, 4)),
    ("t", lambda x: x.t(), (3, 4)),
    ("t_1d", lambda x: x.t(), (3,)),
    ("narrow", lambda x: x.narrow(1, 1, 2), (3, 4)),
    ("narrow_neg", lambda x: x.narrow(-1, -3, 2), (3, 4)),
    ("flip", lambda x: x.flip(0, 2), (2, 3, 4)),
    ("flip_list", lambda x: x.flip([-1]), (2, 3)),
    ("repeat", lambda x: x.repeat(2, 1, 3), (3, 2)),
    ("repeat_same", lambda x: x.repeat(2, 2), (3, 2)),
    ("tile", lambda x: x.tile((2,)), (3, 2)),
    ("swapaxes", lambda x: x.swapaxes(0, 1), (3, 2)),
]


@pytest.mark.parametrize("name,fn,shape", VIEW_CASES, ids=[c[0] for c in VIEW_CASES])
def test_view_ops_match_torch(name, fn, shape):
    check_against_torch(fn, fn, [rnd(*shape)])


def test_zero_dim_views():
    # ember.tensor(0-d data) is built with from_numpy here, so the test does not depend on tensor()'s 0-d handling
    for fn in (lambda x: x.flatten(), lambda x: x.unsqueeze(0), lambda x: x.unsqueeze(-1), lambda x: x.squeeze(0),
               lambda x: x.reshape(1, 1), lambda x: x.flip(0), lambda x: x.t(), lambda x: x.repeat(2, 3)):
        e = ember.from_numpy(np.array(2.5, np.float32)).requires_grad_(True)
        t = torch.tensor(2.5, requires_grad=True)
        eo, to = fn(e), fn(t)
        assert eo.shape == tuple(to.shape)
        np.testing.assert_allclose(eo.detach().numpy(), to.detach().numpy())
        w = rnd(*to.shape)
        (eo * ember.tensor(w)).sum().backward()
        (to * torch.tensor(w)).sum().backward()
        assert e.grad.shape == ()
        np.testing.assert_allclose(e.grad.numpy(), t.grad.numpy(), rtol=1e-6)


def test_expand_as_view_as_reshape_as():
    o = rnd(2, 3, 4)
    check_against_torch(lambda a, b: a.expand_as(b), lambda a, b: a.expand_as(b), [rnd(3, 1), o], grad_inputs=[0])
    check_against_torch(lambda a, b: a.view_as(b), lambda a, b: a.view_as(b), [rnd(4, 6), o], grad_inputs=[0])
    check_against_torch(lambda a, b: a.reshape_as(b), lambda a, b: a.reshape_as(b), [rnd(24), o], grad_inputs=[0])


def test_module_level_functions():
    x = ember.tensor(rnd(2, 3, 1))
    assert ember.flatten(x).shape == (6,)
    assert ember.squeeze(x, -1).shape == (2, 3)
    assert ember.unsqueeze(x, 0).shape == (1, 2, 3, 1)
    assert ember.movedim(x, 2, 0).shape == (1, 2, 3)
    assert ember.narrow(x, 1, 0, 2).shape == (2, 2, 1)
    assert ember.flip(x, 0).shape == (2, 3, 1)
    assert ember.concat([x, x], 2).shape == (2, 3, 2)
    assert ember.concatenate([x, x]).shape == (4, 3, 1)


@pytest.mark.parametrize("fn", [lambda x: x.flip(1), lambda x: x.repeat(2, 1, 2), lambda x: x.movedim(2, 0).flatten(1),
                                lambda x: x.narrow(2, 1, 2).unsqueeze(0).squeeze(1)])
def test_view_ops_gradcheck(fn):
    gradcheck(fn, [rnd(2, 3, 4, dtype=np.float64)])


def test_flip_and_narrow_are_copies_and_views():
    x = ember.tensor([[1.0, 2.0], [3.0, 4.0]])
    f = x.flip(0)
    f.numpy()[0, 0] = 9.0  # flip copies, like torch
    assert x.numpy()[1, 0] == 3.0
    n = x.narrow(1, 0, 1)
    assert np.shares_memory(n.numpy(), x.numpy())
    v = x._version
    n[0] = 0.0  # writes through the view and bumps the shared version counter
    assert x.numpy()[0, 0] == 0.0 and x._version == v + 1


def test_narrow_kernel_takes_a_negative_dim_like_its_shape_rule():
    """Graphs call the kernel directly (the public narrow normalises dim first); -1 is the last dim."""
    from ember.ops.registry import get_op

    op = get_op("narrow")
    a = np.arange(12.0).reshape(3, 4)
    got = op.kernels["cpu"](a, dim=-1, start=1, length=2)
    assert got.shape == op.shape(a.shape, dim=-1, start=1, length=2) == (3, 2)
    np.testing.assert_array_equal(got, torch.from_numpy(a).narrow(-1, 1, 2).numpy())


@settings(deadline=None, max_examples=20)
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4), data=st.data())
def test_permute_transpose_noncontiguous(shape, data):
    perm = data.draw(st.permutations(range(len(shape))))
    a = rnd(*shape)

    def fn(x):  # a transposed (non-contiguous) input, permuted, made contiguous by reshape
        y = x.transpose(0, -1).permute(*perm)
        return y.reshape(-1)

    check_against_torch(fn, fn, [a])
    d0, d1 = data.draw(st.integers(-len(shape), len(shape) - 1)), data.draw(st.integers(-len(shape), len(shape) - 1))
    check_against_torch(lambda x: x.T.transpose(d0, d1), lambda x: x.permute(*reversed(range(x.ndim))).transpose(d0, d1), [a])


# ---- cat / stack / split / chunk / unbind -----------------------------------------------------------

@pytest.mark.parametrize("dim", [0, 1, -1])
def test_cat(dim):
    shapes = [(2, 3, 4), (2, 3, 4), (2, 3, 4)]
    shapes = [tuple(s if i != dim % 3 else s + k for i, s in enumerate(sh)) for k, sh in enumerate(shapes)]
    check_against_torch(lambda *xs: ember.cat(xs, dim), lambda *xs: torch.cat(xs, dim), [rnd(*s) for s in shapes])


def test_cat_dtype_promotion_and_grad_flows_through_cast():
    a, b, c = rnd(2, 3), rnd(1, 3, dtype=np.float64), np.arange(3).reshape(1, 3)
    check_against_torch(lambda x, y, z: ember.cat([x, y, z]), lambda x, y, z: torch.cat([x, y, z]), [a, b, c])
    i8 = np.ones((1, 3), np.int32)
    check_against_torch(lambda x, y: ember.cat([x, y]), lambda x, y: torch.cat([x, y]), [np.arange(3)[None], i8])


def test_cat_skips_legacy_empty_and_single():
    x = ember.tensor(rnd(2, 3))
    assert ember.cat([x, ember.zeros(0)]).shape == (2, 3)
    y = ember.cat([x])
    assert y.shape == (2, 3) and y is not x


def test_cat_errors():
    with pytest.raises(RuntimeError, match=r"cat: sizes of tensors must match except in dimension 0; expected size 4 "
                                           r"but got size 5 in dimension 1 for tensor number 1"):
        ember.cat([ember.zeros(3, 4), ember.zeros(3, 5)])
    with pytest.raises(RuntimeError, match=r"same number of dimensions: got 2 .* and 3"):
        ember.cat([ember.zeros(3, 4), ember.zeros(1, 3, 4)])
    with pytest.raises(ValueError, match="cat: expected a non-empty list of Tensors"):
        ember.cat([])
    with pytest.raises(RuntimeError, match="zero-dimensional tensor"):
        ember.cat([ember.from_numpy(np.array(1.0, np.float32))] * 2)
    with pytest.raises(IndexError, match=r"cat: dimension out of range .* but got 2"):
        ember.cat([ember.zeros(3, 4)], 2)


@settings(deadline=None, max_examples=20)
@given(rows=st.lists(st.integers(0, 3), min_size=1, max_size=4), cols=st.integers(1, 4),
       dim=st.sampled_from([0, 1]), transposed=st.booleans())
def test_cat_hypothesis_noncontiguous(rows, cols, dim, transposed):
    arrays = [rnd(r, cols) for r in rows]

    def make(lib):
        def fn(*xs):
            if transposed:  # cat the transposes: strided inputs
                xs = [x.transpose(0, 1) for x in xs]
                return lib.cat(xs, 1 - dim) if dim == 0 else lib.cat(xs, 1)
            return lib.cat(xs, 0)
        return fn

    check_against_torch(make(ember), make(torch), arrays)


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_stack(dim):
    check_against_torch(lambda *xs: ember.stack(xs, dim), lambda *xs: torch.stack(xs, dim), [rnd(2, 3) for _ in range(3)])


def test_stack_error_and_gradcheck():
    with pytest.raises(RuntimeError, match=r"stack: expects each tensor to be equal size, but got \(3, 4\) at entry 0 "
                                           r"and \(3, 5\) at entry 1"):
        ember.stack([ember.zeros(3, 4), ember.zeros(3, 5)])
    gradcheck(lambda a, b: ember.stack([a, b], 1), [rnd(2, 3, dtype=np.float64), rnd(2, 3, dtype=np.float64)])
    gradcheck(lambda a, b: ember.cat([a, b], 1), [rnd(2, 3, dtype=np.float64), rnd(2, 1, dtype=np.float64)])


@pytest.mark.parametrize("arg,dim", [(2, 0), (3, 1), ([1, 3, 1], 1), (5, 1), ([0, 5], 1), (1, -1)])
def test_split(arg, dim):
    check_against_torch(lambda x: x.split(arg, dim), lambda x: x.split(arg, dim), [rnd(4, 5)])


@pytest.mark.parametrize("chunks,dim", [(2, 0), (3, 1), (4, 1), (6, 0), (1, 1)])
def test_chunk(chunks, dim):
    check_against_torch(lambda x: x.chunk(chunks, dim), lambda x: x.chunk(chunks, dim), [rnd(5, 4)])
    check_against_torch(lambda x: ember.chunk(x, chunks, dim), lambda x: torch.chunk(x, chunks, dim), [rnd(5, 4)])


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_unbind(dim):
    check_against_torch(lambda x: x.unbind(dim), lambda x: x.unbind(dim), [rnd(3, 2, 4)])


def test_split_chunk_empty_and_errors():
    assert [t.shape for t in ember.zeros(0, 2).split(2)] == [tuple(t.shape) for t in torch.zeros(0, 2).split(2)]
    assert [t.shape for t in ember.zeros(0).chunk(3)] == [tuple(t.shape) for t in torch.zeros(0).chunk(3)]
    x = ember.zeros(3, 4)
    with pytest.raises(RuntimeError, match=r"split_with_sizes expects split_sizes to sum exactly to 3 .*"
                                           r"but got split_sizes=\[1, 1\]"):
        x.split([1, 1])
    with pytest.raises(RuntimeError, match="split_size can only be 0 if dimension size is 0"):
        x.split(0)
    with pytest.raises(RuntimeError, match="chunk: expects `chunks` to be greater than 0, got: 0"):
        x.chunk(0)
    gradcheck(lambda a: a.split([1, 2], 1)[1:], [rnd(2, 3, dtype=np.float64)])
    gradcheck(lambda a: a.unbind(1)[0], [rnd(2, 3, dtype=np.float64)])


def test_iteration_and_errors_of_shape_ops():
    x = ember.zeros(3, 4)
    with pytest.raises(IndexError, match=r"squeeze: dimension out of range \(expected to be in range of \[-2, 1\], "
                                         r"but got 5\)"):
        x.squeeze(5)
    with pytest.raises(IndexError, match=r"unsqueeze: dimension out of range .*\[-3, 2\], but got 3"):
        x.unsqueeze(3)
    with pytest.raises(RuntimeError, match="flatten: start_dim cannot come after end_dim"):
        x.flatten(1, 0)
    with pytest.raises(RuntimeError, match=r"unflatten: provided sizes \(3, 2\) don't multiply up to the size of dim 1 "
                                           r"\(4\)"):
        x.unflatten(1, (3, 2))
    with pytest.raises(RuntimeError, match=r"narrow: start \(2\) \+ length \(3\) exceeds dimension 1 of size 4"):
        x.narrow(1, 2, 3)
    with pytest.raises(RuntimeError, match="repeat: number of dims of repeat sizes"):
        x.repeat(2)
    with pytest.raises(RuntimeError, match="movedim: repeated dim in source"):
        ember.zeros(2, 3, 4).movedim((0, 0), (1, 2))
    with pytest.raises(RuntimeError, match="flip: dim .* appears multiple times"):
        x.flip(0, 0)
    with pytest.raises(RuntimeError, match=r"t\(\) expects a tensor with <= 2 dimensions, but self is 3D"):
        ember.zeros(1, 2, 3).t()


# ---- pad --------------------------------------------------------------------------------------------

PAD_CASES = [
    ((3, 4), (1, 2), "constant", 0.0),
    ((3, 4), (1, 2, 0, 1), "constant", 1.5),
    ((2, 3, 4), (-1, 1, 2, -1), "constant", 0.0),
    ((2, 3, 4), (2, 1, 0, 0, 1, 1), "constant", -2.0),
    ((1, 4), (-3, -1), "constant", 0.0),
    ((2, 3, 5), (2, 3), "reflect", None),
    ((2, 3, 4, 5), (1, 2, 3, 0), "reflect", None),
    ((2, 3, 4, 5), (2, 1, 1, 2), "replicate", None),
    ((3, 5), (4, 1), "replicate", None),
    ((2, 3, 4, 5), (1, 2, 4, 3), "circular", None),
    ((2, 2, 3, 3, 4), (1, 1, 2, 0, 1, 2), "replicate", None),
    ((1, 1, 4), (-1, 2), "reflect", None),
]


@pytest.mark.parametrize("shape,p,mode,value", PAD_CASES)
def test_pad_matches_torch(shape, p, mode, value):
    kw = {} if value is None else {"value": value}
    check_against_torch(lambda x: epad(x, p, mode=mode, **kw), lambda x: F.pad(x, p, mode=mode, **kw), [rnd(*shape)])


@pytest.mark.parametrize("p,mode", [((1, 2, -1, 1), "constant"), ((2, 1, 1, 2), "reflect"), ((2, 1, 0, 3), "replicate"),
                                    ((1, 3, 2, 2), "circular")])
def test_pad_gradcheck(p, mode):
    gradcheck(lambda x: epad(x, p, mode=mode), [rnd(1, 2, 4, 3, dtype=np.float64)])


def test_pad_double_backward_op_is_registered():
    # pad_backward is linear; its own gradient is pad again
    g = ember.tensor(rnd(1, 1, 6, dtype=np.float64), requires_grad=True)
    gx = ember.ops.apply("pad_backward", g, pad=(1, 1), mode="reflect", shape=(1, 1, 4))
    w = rnd(1, 1, 4, dtype=np.float64)
    (gx * ember.tensor(w, dtype=ember.float64)).sum().backward()
    np.testing.assert_allclose(g.grad.numpy(), F.pad(torch.tensor(w), (1, 1), mode="reflect").numpy())


def test_pad_int_and_errors():
    x = ember.tensor([[1, 2], [3, 4]])
    np.testing.assert_array_equal(epad(x, (1, 1), value=7).numpy(), F.pad(torch.tensor([[1, 2], [3, 4]]), (1, 1), value=7).numpy())
    with pytest.raises(RuntimeError, match="pad: padding length must be divisible by 2"):
        epad(ember.zeros(3, 4), (1,))
    with pytest.raises(RuntimeError, match="padding length should be less than or equal to two times the input dimension"):
        epad(ember.zeros(3), (1, 1, 1, 1))
    with pytest.raises(RuntimeError, match=r"padding size should be less than the corresponding input dimension in reflect "
                                           r"mode, but got padding \(5, 5\) at dimension 2 of input \(3, 4, 5\)"):
        epad(ember.zeros(3, 4, 5), (5, 5), mode="reflect")
    with pytest.raises(NotImplementedError, match="padding size 6 is not supported for 3D input"):
        epad(ember.zeros(3, 4, 5), (1,) * 6, mode="reflect")
    with pytest.raises(NotImplementedError, match="unrecognised padding mode 'foo'"):
        epad(ember.zeros(3, 4, 5), (1, 1), mode="foo")
    with pytest.raises(RuntimeError, match="resulted in a negative output size"):
        epad(ember.zeros(1, 4), (-3, -3))
    with pytest.raises(RuntimeError, match="wraps around more than once"):
        epad(ember.zeros(1, 1, 4), (5, 1), mode="circular")


def test_permute_transpose_expand_errors():
    x = ember.zeros(2, 3)
    with pytest.raises(IndexError, match=r"permute: dimension out of range .* but got 5"):
        x.permute(0, 5)
    with pytest.raises(RuntimeError, match="permute: dims .* is not a permutation"):
        x.permute(1, -1)
    with pytest.raises(RuntimeError, match="permute: number of dims 1 doesn't match the tensor's 2 dims"):
        x.permute(0)
    with pytest.raises(IndexError, match=r"transpose: dimension out of range .* but got 2"):
        x.transpose(0, 2)
    with pytest.raises(RuntimeError, match="expand: the expanded size 4 must match the existing size 3 at non-singleton "
                                           "dimension 1"):
        x.expand(2, 4)
    with pytest.raises(RuntimeError, match=r"reshape: shape \(4, 2\) is invalid for input of size 6"):
        x.reshape(4, 2)
