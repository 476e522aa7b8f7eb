"""ember.data against torch.utils.data (batching, collate, samplers) and the bundled digits set
against the raw file and sklearn.datasets.load_digits."""
from __future__ import annotations

import collections
import csv
import gzip
import hashlib

import numpy as np
import pytest
import torch
import torch.utils.data as tud
from hypothesis import given, settings, strategies as st

import ember
from ember.data import (
    BatchSampler, ConcatDataset, DataLoader, Dataset, IterableDataset, RandomSampler, SequentialSampler, Subset,
    SubsetRandomSampler, TensorDataset, WeightedRandomSampler, datasets, default_collate, random_split,
)


def _assert_same_batch(e, t):
    """Same structure (list/dict/namedtuple/str) and same values and dtypes as torch's batch."""
    if isinstance(t, torch.Tensor):
        assert isinstance(e, ember.Tensor), type(e)
        assert e.shape == tuple(t.shape)
        assert e.numpy().dtype == t.numpy().dtype
        np.testing.assert_array_equal(e.numpy(), t.numpy())
    elif isinstance(t, dict):
        assert type(e) is type(t) and list(e) == list(t)
        for k in t:
            _assert_same_batch(e[k], t[k])
    elif isinstance(t, (list, tuple)) and not isinstance(t, str):
        assert type(e) is type(t) and len(e) == len(t), (type(e), type(t))
        for a, b in zip(e, t):
            _assert_same_batch(a, b)
    else:
        assert e == t


def _pair(n, feat=(3,)):
    x = np.arange(n * int(np.prod(feat)), dtype=np.float32).reshape((n,) + feat)
    y = (np.arange(n) % 4).astype(np.int64)
    return TensorDataset(ember.tensor(x), ember.tensor(y)), tud.TensorDataset(torch.tensor(x), torch.tensor(y))


# ---- datasets ----------------------------------------------------------------------------

def test_tensor_dataset_items_and_errors():
    ds, _ = _pair(5)
    assert len(ds) == 5
    x, y = ds[2]
    np.testing.assert_array_equal(x.numpy(), [6, 7, 8])
    assert y.item() == 2 and y.dtype == ember.int64
    x2, = TensorDataset(np.ones((4, 2), np.float32))[-1]
    assert x2.shape == (2,)
    with pytest.raises(ValueError, match=r"size mismatch.*\[5, 4\].*\(5, 3\), \(4,\)"):
        TensorDataset(ember.zeros(5, 3), ember.zeros(4))
    with pytest.raises(TypeError, match="argument 1 is a list"):
        TensorDataset(ember.zeros(2), [1, 2])
    with pytest.raises(ValueError, match="at least one"):
        TensorDataset()


def test_subset_concat_and_add():
    a, _ = _pair(4)
    b, _ = _pair(3)
    c = a + b
    assert isinstance(c, ConcatDataset) and len(c) == 7 and c.cumulative_sizes == [4, 7]
    np.testing.assert_array_equal(c[5][0].numpy(), b[1][0].numpy())
    np.testing.assert_array_equal(c[-1][0].numpy(), b[2][0].numpy())
    np.testing.assert_array_equal(c[3][0].numpy(), a[3][0].numpy())
    with pytest.raises(IndexError, match="index 7 is out of range.*length 7"):
        c[7]
    with pytest.raises(IndexError):
        c[-8]
    with pytest.raises(ValueError, match="empty"):
        ConcatDataset([])
    s = Subset(a, [3, 0])
    assert len(s) == 2
    np.testing.assert_array_equal(s[0][0].numpy(), a[3][0].numpy())


@pytest.mark.parametrize("n, lengths", [(10, [3, 7]), (10, [0.3, 0.3, 0.4]), (11, [0.5, 0.5]),
                                        (7, [0.1, 0.2, 0.7]), (5, [0.25, 0.25, 0.25, 0.25])])
def test_random_split_lengths_match_torch(n, lengths):
    ds, tds = _pair(n)
    parts = random_split(ds, lengths, generator=ember.Generator(0))
    ref = tud.random_split(tds, lengths, generator=torch.Generator().manual_seed(0))
    assert [len(p) for p in parts] == [len(r) for r in ref]
    idx = sorted(i for p in parts for i in p.indices)
    assert idx == list(range(n))  # disjoint and complete
    again = random_split(ds, lengths, generator=ember.Generator(0))
    assert [p.indices for p in parts] == [p.indices for p in again]


def test_random_split_errors_and_global_seed():
    ds, _ = _pair(10)
    small, tsmall = _pair(3)
    with pytest.warns(UserWarning, match="index 1 is 0"):
        parts = random_split(small, [0.1, 0.1, 0.8])
    with pytest.warns(UserWarning):
        ref = tud.random_split(tsmall, [0.1, 0.1, 0.8])
    assert [len(p) for p in parts] == [len(r) for r in ref] == [1, 0, 2]
    with pytest.raises(ValueError, match="sum of input lengths.*does not equal the length of the dataset \\(10\\)"):
        random_split(ds, [3, 3])
    with pytest.raises(ValueError, match="not between 0 and 1"):
        random_split(ds, [1.5, -0.5])
    ember.manual_seed(3)
    a = [p.indices for p in random_split(ds, [5, 5])]
    ember.manual_seed(3)
    assert a == [p.indices for p in random_split(ds, [5, 5])]


# ---- samplers ----------------------------------------------------------------------------

@pytest.mark.parametrize("n, bs, drop_last", [(10, 3, False), (10, 3, True), (9, 3, True), (2, 5, False),
                                              (2, 5, True), (0, 2, False)])
def test_batch_sampler_matches_torch(n, bs, drop_last):
    ours = BatchSampler(SequentialSampler(range(n)), bs, drop_last)
    ref = tud.BatchSampler(tud.SequentialSampler(range(n)), bs, drop_last)
    assert list(ours) == list(ref)
    assert len(ours) == len(ref)
    # A plain iterable sampler (no fast index array) batches the same way, keeping its index type.
    assert list(BatchSampler(list(range(n)), bs, drop_last)) == list(ref)
    assert list(BatchSampler(["a", "b", "c"], 2, False)) == [["a", "b"], ["c"]]


def test_sampler_errors_and_random_sampler():
    with pytest.raises(ValueError, match="batch_size should be a positive integer value, but got batch_size=0"):
        BatchSampler(range(3), 0, False)
    with pytest.raises(ValueError, match="num_samples should be a positive integer"):
        RandomSampler(range(0))
    s = RandomSampler(range(5), num_samples=12, generator=ember.Generator(1))
    draws = list(s)
    assert len(s) == 12 and len(draws) == 12
    assert sorted(draws[:5]) == list(range(5)) and sorted(draws[5:10]) == list(range(5))
    r = RandomSampler(range(4), replacement=True, num_samples=50, generator=ember.Generator(1))
    out = list(r)
    assert len(out) == 50 and set(out) <= set(range(4)) and len(set(out)) == 4
    sub = SubsetRandomSampler([7, 3, 9], generator=ember.Generator(2))
    assert sorted(sub) == [3, 7, 9] and len(sub) == 3
    w = WeightedRandomSampler([0.0, 1.0, 3.0, 0.0], 200, generator=ember.Generator(0))
    out = np.array(list(w))
    assert set(out.tolist()) == {1, 2} and 0.6 < np.mean(out == 2) < 0.9
    assert sorted(WeightedRandomSampler([1, 1, 1], 3, replacement=False)) == [0, 1, 2]
    with pytest.raises(ValueError, match="without replacement"):
        WeightedRandomSampler([1, 0, 1], 3, replacement=False)


# ---- DataLoader --------------------------------------------------------------------------

@settings(deadline=None, max_examples=20)
@given(n=st.integers(1, 23), bs=st.integers(1, 9), drop_last=st.booleans(), subset=st.booleans())
def test_sequential_loader_matches_torch(n, bs, drop_last, subset):
    ds, tds = _pair(n, feat=(2, 3))
    if subset:  # the fast path through a Subset (reversed rows)
        ds, tds = Subset(ds, list(range(n))[::-1]), tud.Subset(tds, list(range(n))[::-1])
    ours = DataLoader(ds, batch_size=bs, drop_last=drop_last)
    ref = tud.DataLoader(tds, batch_size=bs, drop_last=drop_last)
    assert len(ours) == len(ref)
    e_batches, t_batches = list(ours), list(ref)
    assert len(e_batches) == len(t_batches)
    for e, t in zip(e_batches, t_batches):
        _assert_same_batch(e, t)
    # The per-sample path (any collate_fn other than default_collate itself) gives the same batches.
    slow = list(DataLoader(ds, batch_size=bs, drop_last=drop_last, collate_fn=lambda b: default_collate(b)))
    for e, t in zip(slow, t_batches):
        _assert_same_batch(e, t)


def test_fast_path_batches_are_copies():
    ds, _ = _pair(6)
    x, _ = next(iter(DataLoader(ds, batch_size=4)))
    x.numpy()[...] = -1
    assert ds.tensors[0].numpy().min() == 0


class _DictDataset(Dataset):
    """Samples of every kind default_collate handles."""

    Point = collections.namedtuple("Point", ["u", "v"])

    def __len__(self):
        return 7

    def __getitem__(self, i):
        return {
            "img": np.full((2, 2), i, dtype=np.float64),
            "label": i % 3,
            "flag": i % 2 == 0,
            "name": f"s{i}",
            "pair": (np.int32(i), [i, i + 1]),
            "pt": self.Point(np.float32(i), np.arange(3) + i),
        }


def test_collate_structures_match_torch():
    ours = list(DataLoader(_DictDataset(), batch_size=3))
    ref = list(tud.DataLoader(_DictDataset(), batch_size=3))
    assert len(ours) == len(ref) == 3
    for e, t in zip(ours, ref):
        _assert_same_batch(e, t)
    assert isinstance(ours[0]["pt"], _DictDataset.Point)


def test_collate_floats_are_float32_and_errors():
    # ember's default float: python floats collate to float32 (torch gives float64).
    out = default_collate([(1.5, 2), (2.5, 3)])
    assert out[0].dtype == ember.float32 and out[1].dtype == ember.int64
    np.testing.assert_array_equal(out[0].numpy(), np.float32([1.5, 2.5]))
    with pytest.raises(RuntimeError, match=r"stack expects each tensor to be equal size, but got \(2,\) at entry 0 "
                                           r"and \(3,\) at entry 1"):
        default_collate([ember.zeros(2), ember.zeros(3)])
    with pytest.raises(RuntimeError, match="equal size"):
        default_collate([[1, 2], [1]])
    with pytest.raises(TypeError, match="batch must contain tensors, numpy arrays, numbers, dicts or lists; found"):
        default_collate([object(), object()])
    with pytest.raises(TypeError, match="found <U"):
        default_collate([np.array(["a"]), np.array(["b"])])


def test_batch_size_none_converts_like_torch():
    ours = list(DataLoader(_DictDataset(), batch_size=None))
    ref = list(tud.DataLoader(_DictDataset(), batch_size=None))
    assert len(ours) == len(ref) == 7
    for e, t in zip(ours, ref):
        _assert_same_batch(e, t)


def _epoch_indices(loader):
    return np.concatenate([b[1].numpy() for b in loader])


def test_shuffle_epochs_permute_and_reproduce():
    n = 50
    ds = TensorDataset(ember.zeros(n, 2), ember.arange(n))
    loader = DataLoader(ds, batch_size=8, shuffle=True, generator=ember.Generator(0))
    e1, e2 = _epoch_indices(loader), _epoch_indices(loader)
    assert sorted(e1.tolist()) == list(range(n)) and sorted(e2.tolist()) == list(range(n))
    assert not np.array_equal(e1, e2) and not np.array_equal(e1, np.arange(n))
    again = DataLoader(ds, batch_size=8, shuffle=True, generator=ember.Generator(0))
    np.testing.assert_array_equal(_epoch_indices(again), e1)
    np.testing.assert_array_equal(_epoch_indices(again), e2)
    # Without a generator: ember's global one, reproducible after ember.manual_seed.
    glob = DataLoader(ds, batch_size=8, shuffle=True, drop_last=True)
    ember.manual_seed(0)
    g1 = [_epoch_indices(glob) for _ in range(2)]
    ember.manual_seed(0)
    g2 = [_epoch_indices(glob) for _ in range(2)]
    assert len(g1[0]) == 48 and len(glob) == 6
    np.testing.assert_array_equal(g1[0], g2[0])
    np.testing.assert_array_equal(g1[1], g2[1])
    assert not np.array_equal(g1[0], g1[1])


def test_loader_options_match_torch():
    ds, tds = _pair(10)
    bs = BatchSampler(SequentialSampler(ds), 4, drop_last=False)
    ours = DataLoader(ds, batch_sampler=bs)
    ref = tud.DataLoader(tds, batch_sampler=tud.BatchSampler(tud.SequentialSampler(tds), 4, False))
    assert len(ours) == len(ref) == 3
    for e, t in zip(ours, ref):
        _assert_same_batch(e, t)
    # Custom batch sampler as a plain list of index lists, and an explicit sampler.
    for e, t in zip(DataLoader(ds, batch_sampler=[[9, 0], [4]]), tud.DataLoader(tds, batch_sampler=[[9, 0], [4]])):
        _assert_same_batch(e, t)
    for e, t in zip(DataLoader(ds, batch_size=3, sampler=[5, 1, 2, 8]),
                    tud.DataLoader(tds, batch_size=3, sampler=[5, 1, 2, 8])):
        _assert_same_batch(e, t)
    with pytest.raises(ValueError, match="sampler option is mutually exclusive with shuffle"):
        DataLoader(ds, sampler=[0, 1], shuffle=True)
    with pytest.raises(ValueError, match="batch_sampler option is mutually exclusive"):
        DataLoader(ds, batch_sampler=bs, batch_size=2)
    with pytest.raises(ValueError, match="mutually exclusive with drop_last"):
        DataLoader(ds, batch_size=None, drop_last=True)
    with pytest.warns(UserWarning, match="num_workers=2 is ignored"):
        workers = DataLoader(ds, batch_size=3, num_workers=2)
    for e, t in zip(workers, tud.DataLoader(tds, batch_size=3)):  # still loads, in the main process
        _assert_same_batch(e, t)
    with pytest.raises(ValueError, match="persistent_workers need num_workers > 0"):
        DataLoader(ds, persistent_workers=True)
    with pytest.raises(ValueError, match="non-negative"):
        DataLoader(ds, num_workers=-1)


class _Stream(IterableDataset):
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return iter(np.arange(self.n, dtype=np.int64) * 10)

    def __len__(self):
        return self.n


class _TorchStream(tud.IterableDataset):
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return iter(np.arange(self.n, dtype=np.int64) * 10)


@pytest.mark.parametrize("drop_last", [False, True])
def test_iterable_dataset_matches_torch(drop_last):
    ours = DataLoader(_Stream(7), batch_size=3, drop_last=drop_last)
    ref = tud.DataLoader(_TorchStream(7), batch_size=3, drop_last=drop_last)
    e, t = list(ours), list(ref)
    assert len(e) == len(t) == len(ours)
    for a, b in zip(e, t):
        _assert_same_batch(a, b)
    with pytest.raises(ValueError, match="IterableDataset: expected unspecified shuffle"):
        DataLoader(_Stream(3), shuffle=True)


# ---- digits ------------------------------------------------------------------------------

def _file_table():
    """The CSV parsed with the csv module, independently of ember's numpy reader."""
    with gzip.open(datasets.DIGITS_PATH, "rt") as f:
        return np.array([[int(v) for v in row] for row in csv.reader(f)], dtype=np.int64)


def test_digits_all_matches_file_and_sklearn():
    sk = pytest.importorskip("sklearn.datasets").load_digits()
    ds = datasets.digits("all", normalize=False)
    x, y = (t.numpy() for t in ds.tensors)
    table = _file_table()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(x.reshape(-1, 64), table[:, :64])
    np.testing.assert_array_equal(y, table[:, 64])
    np.testing.assert_array_equal(x[:, 0], sk.images)
    np.testing.assert_array_equal(y, sk.target)
    counts = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert np.bincount(table[:, 64]).tolist() == counts
    assert np.bincount(sk.target).tolist() == counts
    flat = datasets.digits("all", flatten=True)
    xf = flat.tensors[0].numpy()
    assert xf.shape == (1797, 64) and xf.dtype == np.float32
    assert 0.0 == xf.min() and xf.max() == 1.0
    np.testing.assert_array_equal(xf, sk.data.astype(np.float32) / 16)


def test_digits_splits():
    tr, te = datasets.digits("train"), datasets.digits("test")
    xtr, ytr = (t.numpy() for t in tr.tensors)
    xte, yte = (t.numpy() for t in te.tensors)
    assert len(tr) + len(te) == 1797 and len(te) == 359
    assert xtr.shape == (len(tr), 1, 8, 8) and xte.dtype == np.float32 and yte.dtype == np.int64
    assert 0.0 <= xtr.min() and xtr.max() <= 1.0
    itr, ite = datasets.digits_split_indices()
    assert len(np.intersect1d(itr, ite)) == 0
    assert sorted(np.concatenate([itr, ite]).tolist()) == list(range(1797))
    full_x, full_y = (t.numpy() for t in datasets.digits("all").tensors)
    np.testing.assert_array_equal(xte, full_x[ite])
    np.testing.assert_array_equal(ytr, full_y[itr])
    # Stratified: every class in both splits, each holding ~20% of its class in test.
    ctr, cte = np.bincount(ytr, minlength=10), np.bincount(yte, minlength=10)
    assert (cte > 0).all() and (ctr > 0).all()
    frac = cte / (ctr + cte)
    assert np.all(np.abs(frac - 0.2) < 0.01), frac
    # Fixed across runs and machines: numpy's PCG64 stream, pinned by a checksum of the indices.
    digest = hashlib.sha256(ite.astype("<i8").tobytes()).hexdigest()
    assert digest == "f71c9ddf317ebe278f01acb013a7eed702a00236a3733c9eefc19ea0e7aefeee"
    np.testing.assert_array_equal(datasets.digits("test").tensors[1].numpy(), yte)
    other = datasets.digits_split_indices(seed=1)[1]
    assert not np.array_equal(other, ite)
    half = datasets.digits("test", test_fraction=0.5)
    assert abs(len(half) - 1797 / 2) <= 10


def test_digits_errors_and_cache_isolation():
    with pytest.raises(ValueError, match="unknown split 'val'; valid splits: 'train', 'test', 'all'"):
        datasets.digits("val")
    with pytest.raises(ValueError, match="test_fraction must be a number strictly between 0 and 1"):
        datasets.digits("train", test_fraction=1.0)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        datasets.digits("train", seed=-1)
    a = datasets.digits("all")
    a.tensors[0].numpy()[...] = 5.0
    a.tensors[1].numpy()[...] = 0
    b = datasets.digits("all")
    assert b.tensors[0].numpy().max() == 1.0 and b.tensors[1].numpy().max() == 9
    assert datasets.DIGITS_CLASSES == tuple(range(10))


def test_digits_loader_epoch():
    train = datasets.digits("train")
    loader = DataLoader(train, batch_size=64, shuffle=True, generator=ember.Generator(0))
    assert len(loader) == -(-len(train) // 64)
    seen = 0
    for x, y in loader:
        assert x.shape[1:] == (1, 8, 8) and x.dtype == ember.float32 and y.dtype == ember.int64
        seen += x.shape[0]
    assert seen == len(train)


def test_requires_grad_tensors_collate_through_stack_like_torch():
    w = np.arange(8, dtype=np.float32).reshape(4, 2)
    ew, tw = ember.tensor(w, requires_grad=True), torch.tensor(w, requires_grad=True)
    order = [3, 0, 3]
    eb = next(iter(DataLoader(TensorDataset(ew, ember.arange(4)), batch_size=3, sampler=order)))
    tb = next(iter(tud.DataLoader(tud.TensorDataset(tw, torch.arange(4)), batch_size=3, sampler=order)))
    np.testing.assert_array_equal(eb[0].detach().numpy(), tb[0].detach().numpy())
    g = np.arange(6, dtype=np.float32).reshape(3, 2)
    eb[0].backward(ember.tensor(g))
    tb[0].backward(torch.tensor(g))
    np.testing.assert_array_equal(ew.grad.numpy(), tw.grad.numpy())
