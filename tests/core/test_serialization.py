"""ember.save / ember.load checkpoints and the safetensors container, checked against the `safetensors` package."""
import json
import math
import os
import struct
import time
from collections import OrderedDict, namedtuple

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import ember
import ember.nn as nn
import ember.nn.functional as F
from ember import safetensors_io as sio
from ember.data.datasets import digits
from ember.serialization import FormatError, load, save

import safetensors.numpy as safetensors_numpy  # noqa: E402  (independent reader/writer of the format)

ALL_DTYPES = [np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8, np.uint8, np.bool_]


def _arrays_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


def _mlp(seed):
    ember.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


# ---- round trips ------------------------------------------------------------------------------
def test_state_dict_round_trip_with_buffers(tmp_path):
    ember.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))
    model(ember.randn(8, 6))  # updates running stats and num_batches_tracked (int64)
    sd = model.state_dict()
    save(sd, tmp_path / "m.ember")
    back = load(tmp_path / "m.ember")
    assert list(back) == list(sd)
    for k in sd:
        assert isinstance(back[k], ember.Tensor) and _arrays_equal(back[k].numpy(), sd[k].numpy()), k
        assert back[k].numpy().flags.writeable
    fresh = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))
    fresh.load_state_dict(back)
    for k, v in fresh.state_dict().items():
        assert _arrays_equal(v.numpy(), sd[k].numpy()), k


def test_plain_values_and_containers_round_trip(tmp_path):
    obj = {
        "epoch": 3, "big": 2 ** 100, "neg": -7, "lr": 0.1, "tiny": 5e-324, "negzero": -0.0,
        "inf": math.inf, "ninf": -math.inf, "nan": math.nan, "name": "résumé ✓ \"q\" \\", "flag": True,
        "off": False, "none": None, "empty": {}, "elist": [], "etuple": (),
        "tuple": (1, (2.5, "x"), [None]), 7: "int key", -1: {"nested": [1, {"deep": (True,)}]},
        "np_scalars": [np.float32(0.5), np.int64(4), np.bool_(True)],
    }
    save(obj, tmp_path / "p.ember")
    back = load(tmp_path / "p.ember")
    assert list(back) == list(obj)  # key order, int keys stay ints
    for k in obj:
        if k in ("nan", "negzero", "np_scalars"):
            continue
        assert back[k] == obj[k] and type(back[k]) is type(obj[k]), k
    assert math.isnan(back["nan"]) and math.copysign(1.0, back["negzero"]) == -1.0
    assert type(back["tuple"]) is tuple and type(back["tuple"][1]) is tuple and type(back["tuple"][2]) is list
    assert back["np_scalars"] == [0.5, 4, True]
    assert [type(v) for v in back["np_scalars"]] == [float, int, bool]
    save(OrderedDict(a=1), tmp_path / "o.ember")
    assert load(tmp_path / "o.ember") == {"a": 1}
    save(2.5, tmp_path / "s.ember")
    assert load(tmp_path / "s.ember") == 2.5


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_numpy_arrays_load_as_tensors(tmp_path, dtype):
    rng = np.random.default_rng(0)
    base = (rng.standard_normal((4, 6)) * 50).astype(dtype)
    arrays = {"plain": base, "t": base.T, "strided": base[::2, 1::3], "scalar": np.array(base[1, 2]),
              "empty": base[:0], "bigendian": base.astype(base.dtype.newbyteorder(">"))}
    save(arrays, tmp_path / "a.ember")
    back = load(tmp_path / "a.ember")
    for k, a in arrays.items():
        assert isinstance(back[k], ember.Tensor)
        assert _arrays_equal(back[k].numpy(), np.asarray(a, dtype=base.dtype)), k


def test_tensor_root_requires_grad_and_sharing(tmp_path):
    w = ember.randn(3, 2, requires_grad=True)
    save(w, tmp_path / "w.ember")
    back = load(tmp_path / "w.ember")
    assert back.requires_grad and back.is_leaf and _arrays_equal(back.detach().numpy(), w.detach().numpy())
    shared = ember.arange(4.0)
    save({"a": shared, "b": [shared], "c": shared[1:]}, tmp_path / "s.ember")
    assert len(safetensors_numpy.load_file(tmp_path / "s.ember")) == 2  # "a"/"b" stored once, the view apart
    back = load(tmp_path / "s.ember")
    assert np.shares_memory(back["a"].numpy(), back["b"][0].numpy())
    assert not np.shares_memory(back["a"].numpy(), back["c"].numpy())


def test_mmap_gives_read_only_views_and_copies_survive_overwrite(tmp_path):
    path = tmp_path / "c.ember"
    save({"w": ember.ones(3, 4), "n": 1}, path)
    mapped = load(path, mmap=True)
    assert not mapped["w"].numpy().flags.writeable
    assert _arrays_equal(mapped["w"].numpy(), np.ones((3, 4), np.float32))
    copied = load(path)
    save({"w": ember.zeros(3, 4), "n": 2}, path)  # atomic replace: the old mapping keeps the old inode
    assert _arrays_equal(copied["w"].numpy(), np.ones((3, 4), np.float32))
    assert _arrays_equal(mapped["w"].numpy(), np.ones((3, 4), np.float32))
    assert load(path)["n"] == 2 and os.listdir(tmp_path) == ["c.ember"]


def test_training_checkpoint_restores_optimizer(tmp_path):
    model = _mlp(0)
    opt = ember.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = ember.randn(16, 64), ember.randint(0, 10, (16,))
    F.cross_entropy(model(x), y).backward()
    opt.step()
    save({"model": model.state_dict(), "optim": opt.state_dict(), "epoch": 3, "best": 0.5}, tmp_path / "ck.ember")
    ck = load(tmp_path / "ck.ember")
    assert ck["epoch"] == 3 and ck["best"] == 0.5
    assert sorted(ck["optim"]["state"]) == [0, 1, 2, 3]
    opt2 = ember.optim.SGD(_mlp(1).parameters(), lr=0.5)
    opt2.load_state_dict(ck["optim"])
    assert opt2.param_groups[0]["lr"] == 0.1 and opt2.param_groups[0]["momentum"] == 0.9


# ---- resume exactness -------------------------------------------------------------------------
def _epoch(model, opt, x, y, epoch, losses):
    order = np.random.default_rng(epoch).permutation(len(y))  # the data order depends only on the epoch
    for start in range(0, len(order), 64):
        idx = ember.from_numpy(order[start:start + 64])
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())


@pytest.mark.parametrize("make_opt", [
    lambda p: ember.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4),
    lambda p: ember.optim.Adam(p, lr=3e-3, betas=(0.8, 0.99)),
], ids=["sgd_momentum", "adam"])
def test_resume_is_exact(tmp_path, make_opt):
    x, y = (t[:512] for t in digits("train", flatten=True).tensors)
    straight = _mlp(0)
    opt = make_opt(straight.parameters())
    straight_losses = []
    for epoch in range(4):
        _epoch(straight, opt, x, y, epoch, straight_losses)

    first = _mlp(0)
    opt = make_opt(first.parameters())
    losses = []
    for epoch in range(2):
        _epoch(first, opt, x, y, epoch, losses)
    save({"model": first.state_dict(), "optim": opt.state_dict(), "epoch": 2, "losses": losses}, tmp_path / "r.ember")
    del first, opt

    ck = load(tmp_path / "r.ember")
    resumed = _mlp(1)  # different initial weights: everything must come from the checkpoint
    opt = make_opt(resumed.parameters())
    resumed.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optim"])
    losses = ck["losses"]
    for epoch in range(ck["epoch"], 4):
        _epoch(resumed, opt, x, y, epoch, losses)
    assert losses == straight_losses
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert np.array_equal(a.numpy(), b.numpy()), k


# ---- unsupported objects ----------------------------------------------------------------------
Pair = namedtuple("Pair", "a b")


@pytest.mark.parametrize("obj, where, kind", [
    ({"optim": {"foo": {1, 2}}}, "checkpoint['optim']['foo']", "set"),
    ({"model": nn.Linear(2, 2)}, "checkpoint['model']", "state_dict()"),
    ([1, lambda x: x], "checkpoint[1]", "never code"),
    ({"p": Pair(1, 2)}, "checkpoint['p']", "Pair"),
    ({"k": {1.5: 2}}, "checkpoint['k']", "key 1.5"),
    ({"k": {True: 2}}, "checkpoint['k']", "key True"),
    ({"a": np.zeros(2, np.complex64)}, "checkpoint['a']", "complex64"),
    ({"a": np.array(["x"])}, "checkpoint['a']", "<U1"),
    ({"o": object()}, "checkpoint['o']", "object"),
])
def test_unsupported_objects_name_their_path(tmp_path, obj, where, kind):
    (tmp_path / "old.ember").write_bytes(b"keep")
    with pytest.raises(TypeError) as e:
        save(obj, tmp_path / "old.ember")
    assert where in str(e.value) and kind in str(e.value)
    assert (tmp_path / "old.ember").read_bytes() == b"keep" and os.listdir(tmp_path) == ["old.ember"]


def test_cycles_are_refused(tmp_path):
    loop = [1]
    loop.append({"x": loop})
    with pytest.raises(ValueError, match=r"checkpoint\[1\]\['x'\] contains itself"):
        save(loop, tmp_path / "c.ember")


# ---- the safetensors package as an independent reader and writer -------------------------------
def test_ember_files_open_with_safetensors(tmp_path):
    rng = np.random.default_rng(1)
    tensors = {f"t{i}": (rng.standard_normal((3, i + 1)) * 9).astype(dt) for i, dt in enumerate(ALL_DTYPES)}
    tensors["odd_f16"] = np.arange(3, dtype=np.float16)  # an odd byte count before wider dtypes
    save(tensors, tmp_path / "e.ember")
    theirs = safetensors_numpy.load_file(tmp_path / "e.ember")
    assert set(theirs) == set(tensors)
    for k, a in tensors.items():
        assert _arrays_equal(theirs[k], a), k


def test_layout_is_contiguous_aligned_and_sorted_by_itemsize(tmp_path):
    sio.write(tmp_path / "l.st", {"b": np.ones(3, np.int8), "a": np.ones(5, np.float64), "c": np.ones(1, np.int16)},
              {"user": "x"})
    raw = (tmp_path / "l.st").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % 64 == 0
    header = json.loads(raw[8:8 + n])
    names = [k for k in header if k != "__metadata__"]
    assert names == ["a", "c", "b"]
    assert [header[k]["data_offsets"] for k in names] == [[0, 40], [40, 42], [42, 45]] and len(raw) == 8 + n + 45
    c = sio.read(tmp_path / "l.st")
    assert c.metadata["user"] == "x" and len(c.metadata[sio.CHECKSUM_KEY]) == 64
    assert all(not a.flags.writeable for a in c.tensors.values())


def test_files_from_safetensors_load_in_ember(tmp_path):
    rng = np.random.default_rng(2)
    tensors = {f"w{i}": (rng.standard_normal((2, 3)) * 9).astype(dt) for i, dt in enumerate(ALL_DTYPES)}
    tensors["odd"] = np.arange(5, dtype=np.int8)
    safetensors_numpy.save_file(tensors, tmp_path / "s.safetensors", metadata={"format": "np", "k": "v"})
    c = sio.read(tmp_path / "s.safetensors")
    assert c.metadata == {"format": "np", "k": "v"}
    for k, a in tensors.items():
        assert _arrays_equal(c.tensors[k], a), k
    for mmap in (False, True):
        flat = load(tmp_path / "s.safetensors", mmap=mmap)
        assert set(flat) == set(tensors) and all(isinstance(v, ember.Tensor) for v in flat.values())
        for k, a in tensors.items():
            assert _arrays_equal(flat[k].numpy(), a), k


# ---- format versions and structure validation ---------------------------------------------------
def _checkpoint_file(path, structure, tensors=None, **meta):
    metadata = {"format": "ember.checkpoint", "format_version": "1.0", "producer": "ember 9.9",
                "structure": structure if isinstance(structure, str) else json.dumps(structure)}
    metadata.update(meta)
    sio.write(path, tensors or {}, metadata)


@pytest.mark.parametrize("structure, meta, match", [
    ({"type": "int", "value": 1}, {"format_version": "2.0"}, r"ember 9\.9 in checkpoint format 2\.0.*upgrade"),
    ({"type": "int", "value": 1}, {"format_version": "1"}, "major.minor"),
    ({"type": "int", "value": 1}, {"format": "ember.program"}, "ember.serialize.load"),
    ({"type": "frob"}, {}, "unknown node type 'frob'"),
    ({"type": "int", "value": 1.5}, {}, "integer"),
    ({"type": "float", "value": "Infinity"}, {}, "finite number"),
    ({"type": "float", "value": 10 ** 400}, {}, "finite number"),
    ({"type": "str", "value": 3}, {}, "str"),
    ({"type": "none", "extra": 1}, {}, "unexpected fields"),
    ({"type": "tensor", "key": "missing"}, {}, "not a stored tensor"),
    ({"type": "list", "items": [{"type": "none"}, 5]}, {}, r"checkpoint\[1\]"),
    ({"type": "dict", "items": [["a", {"type": "none"}], ["a", {"type": "none"}]]}, {}, "duplicate dict key"),
    ({"type": "dict", "items": [[1.5, {"type": "none"}]]}, {}, "not a string or integer"),
    ('{"type":"none","type":"none"}', {}, "duplicate key"),
    ('{"type": NaN}', {}, "NaN"),
    ("[" * 100000, {}, "cannot be read|not valid JSON"),
    ('{"type":"list","items":[' * 400 + '{"type":"none"}' + "]}" * 400, {}, "nested more than 256 levels"),
    ({"type": "none"}, {"structure": None}, "no 'structure'"),
])
def test_structure_errors(tmp_path, structure, meta, match):
    path = tmp_path / "bad.ember"
    if meta.get("structure", 0) is None:
        sio.write(path, {}, {"format": "ember.checkpoint", "format_version": "1.3"})
    else:
        _checkpoint_file(path, structure, **meta)
    with pytest.raises(FormatError, match=match):
        load(path)


def test_unreferenced_tensor_and_grad_on_int_are_refused(tmp_path):
    _checkpoint_file(tmp_path / "u.ember", {"type": "none"}, {"lost": np.ones(2)})
    with pytest.raises(FormatError, match="never refers"):
        load(tmp_path / "u.ember")
    grad_int = {"type": "tensor", "key": "i", "requires_grad": True}
    _checkpoint_file(tmp_path / "g.ember", grad_int, {"i": np.ones(2, np.int64)})
    with pytest.raises(FormatError, match="cannot require gradients"):
        load(tmp_path / "g.ember")
    _checkpoint_file(tmp_path / "later.ember", {"type": "int", "value": 4}, format_version="1.7")
    assert load(tmp_path / "later.ember") == 4  # any 1.x minor version loads


# ---- malformed files ---------------------------------------------------------------------------
def _file(header, data=b"", n=None):
    raw = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(raw) if n is None else n) + raw + data


def _entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


MALFORMED = {
    "empty": (b"", "shorter than the 8-byte"),
    "seven_bytes": (b"\x01" * 7, "shorter than the 8-byte"),
    "header_len_2_63": (_file({}, n=2 ** 63), "over the 100000000 byte limit"),
    "header_len_over_100MB": (_file({}, n=100_000_001), "over the 100000000 byte limit"),
    "header_past_eof": (_file({}, n=64), "runs past the end"),
    "bad_utf8": (_file(b'{"\xff": 1}'), "not valid UTF-8 \\(file byte 10\\)"),
    "bad_json": (_file(b'{"a": '), "not valid JSON"),
    "duplicate_key": (_file(b'{"a": {}, "a": {}}'), "duplicate key 'a'"),
    "nan_constant": (_file(b'{"__metadata__": {"x": NaN}}'), "NaN"),
    "huge_int": (_file(b'{"a": ' + b"9" * 5000 + b"}"), "cannot be read"),
    "deep_nesting": (_file(b"[" * 200000), "cannot be read|not valid JSON"),
    "top_level_list": (_file([]), "must be a JSON object"),
    "entry_not_object": (_file({"a": [1]}), "tensor 'a': header entry must be"),
    "entry_extra_key": (_file({"a": dict(_entry(), x=1)}, b"\0" * 8), "expected exactly"),
    "entry_missing_key": (_file({"a": {"dtype": "F32", "shape": [2]}}, b"\0" * 8), "expected exactly"),
    "unknown_dtype": (_file({"a": _entry(dtype="F128")}, b"\0" * 8), "unknown dtype 'F128'"),
    "dtype_not_str": (_file({"a": _entry(dtype=4)}, b"\0" * 8), "unknown dtype 4"),
    "shape_not_list": (_file({"a": dict(_entry(), shape=2)}, b"\0" * 8), "shape must be a list"),
    "shape_negative": (_file({"a": _entry(shape=(-2,))}, b"\0" * 8), "non-negative integers"),
    "shape_float": (_file({"a": _entry(shape=(2.0,))}, b"\0" * 8), "non-negative integers"),
    "shape_bool": (_file({"a": _entry(shape=(True, 2))}, b"\0" * 8), "non-negative integers"),
    "shape_1e15": (_file({"a": _entry(shape=(10 ** 15,))}, b"\0" * 8), "needs 4000000000000000 bytes"),
    "shape_overflow": (_file({"a": _entry(shape=(2 ** 40, 2 ** 40))}, b"\0" * 8), "overflowing 64 bits"),
    "count_mismatch": (_file({"a": _entry(shape=(3,))}, b"\0" * 8), "needs 12 bytes.*hold 8"),
    "offsets_not_pair": (_file({"a": _entry(offsets=(0, 4, 8))}, b"\0" * 8), r"\[begin, end\]"),
    "offsets_out_of_bounds": (_file({"a": _entry(offsets=(8, 16))}, b"\0" * 8), "outside the 8-byte data"),
    "offsets_reversed": (_file({"a": _entry(offsets=(8, 0))}, b"\0" * 8), "outside"),
    "offsets_negative": (_file({"a": _entry(offsets=(-8, 0))}, b"\0" * 8), "outside"),
    "overlap": (_file({"a": _entry(), "b": _entry(offsets=(4, 12))}, b"\0" * 12), "'b'.*overlaps tensor 'a'"),
    "gap": (_file({"a": _entry(), "b": _entry(offsets=(12, 20))}, b"\0" * 20), "gap of 4 bytes after tensor 'a'"),
    "gap_at_start": (_file({"a": _entry(offsets=(4, 12))}, b"\0" * 12), "gap of 4 bytes at the start"),
    "trailing_bytes": (_file({"a": _entry()}, b"\0" * 9), "cover only 8"),
    "metadata_not_object": (_file({"__metadata__": ["x"]}), "__metadata__ must be a JSON object"),
    "metadata_value_not_str": (_file({"__metadata__": {"epoch": 3}}), r"__metadata__\['epoch'\] must be a string"),
    "bool_not_0_1": (_file({"a": _entry("BOOL", (2,), (0, 2))}, b"\x01\x02"), "other than 0 and 1"),
    "checksum_not_hex": (_file({"__metadata__": {"file_sha256": "xyz"}}), "64 lowercase hex"),
    "checksum_missing": (_file({"__metadata__": {"format": "ember.checkpoint"}}), "no 'file_sha256'"),
    "checksum_wrong": (_file({"__metadata__": {"file_sha256": "0" * 64}}), "fails its SHA-256"),
    "checksum_escaped": (_file(b'{"__metadata__": {"file_sha256": "' + b"0" * 64 + b'"}}'), "verbatim"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_corpus_raises_format_error(tmp_path, name):
    raw, match = MALFORMED[name]
    path = tmp_path / f"{name}.ember"
    path.write_bytes(raw)
    for reader in (sio.read, load):
        t0 = time.perf_counter()
        with pytest.raises(FormatError, match=match) as e:
            reader(path)
        assert time.perf_counter() - t0 < 1.0
        assert str(path) in str(e.value)
    assert issubclass(FormatError, ValueError) and FormatError is sio.FormatError


@pytest.fixture(scope="module")
def valid_file(tmp_path_factory):
    obj = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "m": np.array([True, False]),
           "step": np.int64(5), "cfg": {"name": "run", 0: (1.5, None)}}
    path = tmp_path_factory.mktemp("valid") / "v.ember"
    save(obj, path)
    return path.read_bytes()


def _load_bytes(tmp_path, raw, **kw):
    path = tmp_path / "x.ember"
    path.write_bytes(raw)
    return load(path, **kw)


def test_truncations_and_bit_flips_are_detected(tmp_path, valid_file):
    (n,) = struct.unpack("<Q", valid_file[:8])
    cuts = sorted(set(range(0, 80)) | set(range(80, len(valid_file), 7)) | {8 + n - 1, 8 + n, len(valid_file) - 1})
    for cut in cuts:
        with pytest.raises(FormatError):
            _load_bytes(tmp_path, valid_file[:cut])
    # every bit of the length field, and bytes across the header and the data section
    positions = list(range(8)) + list(range(8, len(valid_file), 5))
    for pos in positions:
        for bit in (0, 3, 7):
            flipped = bytearray(valid_file)
            flipped[pos] ^= 1 << bit
            with pytest.raises(FormatError):
                _load_bytes(tmp_path, bytes(flipped))


@settings(deadline=None, max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), min_size=1, max_size=4),
       cut=st.none() | st.integers(0, 10 ** 6), verify=st.booleans())
def test_mutated_files_only_raise_format_error(tmp_path, valid_file, edits, cut, verify):
    raw = bytearray(valid_file)
    for pos, value in edits:
        raw[pos % len(raw)] = value
    if cut is not None:
        raw = raw[:cut % (len(raw) + 1)]
    try:
        _load_bytes(tmp_path, bytes(raw), verify=verify)
    except FormatError:
        pass


# ---- atomic save -------------------------------------------------------------------------------
def _boom(*args, **kwargs):
    raise OSError("disk on fire")


@pytest.mark.parametrize("where", ["fsync", "replace", "mid_write", "interrupt"])
def test_failed_save_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch, where):
    path = tmp_path / "ck.ember"
    save({"w": ember.ones(64, 64), "epoch": 1}, path)
    before = path.read_bytes()
    if where == "fsync":
        monkeypatch.setattr(os, "fsync", _boom)
    elif where == "replace":
        monkeypatch.setattr(os, "replace", _boom)
    else:
        calls = []
        exc = KeyboardInterrupt if where == "interrupt" else OSError

        def write_some(f, buf):  # the header and the first tensor get written, then the failure
            calls.append(1)
            if len(calls) == 3:
                raise exc("stopped mid-write")
            f.write(buf)

        monkeypatch.setattr(sio, "_write_bytes", write_some)
    with pytest.raises(KeyboardInterrupt if where == "interrupt" else OSError):
        save({"w": ember.zeros(64, 64), "b": ember.zeros(3), "epoch": 2}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["ck.ember"]
    assert load(path)["epoch"] == 1
