"""The safetensors container: atomic writes, and memory-mapped reads validated before any use.

Layout (docs/checkpoint-format.md): a little-endian u64 header length N, N bytes of UTF-8 JSON
(``{name: {"dtype", "shape", "data_offsets"}, "__metadata__": {str: str}}``), then the data section.
Every number a file claims is checked against the file's real size with Python ints first, so a
hostile header can make a read fail but never allocate, and every failure is a ``FormatError``.
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import secrets
import struct

import numpy as np

DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_DTYPE_NAMES = {dt: name for name, dt in DTYPES.items()}
MAX_HEADER_BYTES = 100 * 1000 * 1000
ALIGNMENT = 64
CHECKSUM_KEY = "file_sha256"
_ZERO_DIGEST = "0" * 64
_TENSOR_FIELDS = ("data_offsets", "dtype", "shape")
_HASH_CHUNK = 1 << 24


class FormatError(ValueError):
    """A file that is not a valid safetensors / ember file; the message names the file, what and where."""


class Container:
    """A validated file: ``tensors`` (name -> read-only numpy view of the mapped file, in header order)
    and ``metadata`` (str -> str). ``data_start`` is the file offset of the data section."""

    __slots__ = ("path", "tensors", "metadata", "data_start", "_mm")

    def __init__(self, path, tensors, metadata, data_start, mm):
        self.path = path
        self.tensors = tensors
        self.metadata = metadata
        self.data_start = data_start
        self._mm = mm

    def close(self):
        """Drop the views and unmap the file (a no-op for the mapping while other views still use it)."""
        self.tensors = {}
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:  # a caller still holds a zero-copy view: the GC unmaps it later
                pass
            self._mm = None


# ---- writing --------------------------------------------------------------------------------
def _as_le_array(name, a) -> np.ndarray:
    a = np.asarray(a)
    dt = a.dtype.newbyteorder("<")  # the format is little-endian whatever the machine
    if dt not in _DTYPE_NAMES:
        valid = ", ".join(str(d) for d in _DTYPE_NAMES)
        raise TypeError(f"safetensors write: tensor {name!r} has dtype {a.dtype}, which the format cannot hold; "
                        f"valid dtypes: {valid}")
    return a.astype(dt, order="C", copy=False)  # (np.ascontiguousarray would turn 0-d into 1-d)


def encode(tensors, metadata=None, checksum=True):
    """(length field + header bytes, arrays in data order) for ``tensors`` (name -> array) and ``metadata``.

    Tensors are ordered by decreasing itemsize (stable), so with the 64-byte aligned data start every
    tensor is aligned for its dtype while the data stays contiguous; the header lists them in that order.
    ``checksum`` adds ``file_sha256``: the SHA-256 of the whole file with its own 64 hex digits read as '0's.
    """
    if metadata is None:
        metadata = {}
    if checksum and CHECKSUM_KEY in metadata:
        raise ValueError(f"safetensors write: metadata key {CHECKSUM_KEY!r} is reserved for the writer's checksum")
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"safetensors write: metadata must map str to str, got {k!r}: {type(v).__name__}")
    arrays = []
    for name, a in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"safetensors write: invalid tensor name {name!r} (a str other than '__metadata__')")
        arrays.append((name, _as_le_array(name, a)))
    arrays.sort(key=lambda item: -item[1].itemsize)
    meta = dict(metadata)
    if checksum:
        meta[CHECKSUM_KEY] = _ZERO_DIGEST
    header, offset = {}, 0
    for name, a in arrays:
        header[name] = {"dtype": _DTYPE_NAMES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    if meta:
        header["__metadata__"] = meta
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % ALIGNMENT)
    if len(raw) > MAX_HEADER_BYTES:
        raise ValueError(f"safetensors write: the header would be {len(raw)} bytes, over the {MAX_HEADER_BYTES} "
                         f"byte limit readers enforce (too much metadata)")
    head = struct.pack("<Q", len(raw)) + raw
    arrays = [a for _, a in arrays]
    if checksum:
        h = hashlib.sha256(head)
        for a in arrays:
            h.update(_raw(a))
        head = head.replace(_digest_field(_ZERO_DIGEST), _digest_field(h.hexdigest()))
    return head, arrays


def _digest_field(hexdigest: str) -> bytes:
    """The exact bytes of the checksum entry in a header written by ``encode``."""
    return f'"{CHECKSUM_KEY}":"{hexdigest}"'.encode("ascii")


def _raw(a: np.ndarray):
    """The bytes of a C-contiguous array without a copy."""
    return a.reshape(-1).view(np.uint8)


def _write_bytes(f, buf) -> None:
    """Every write of ``write`` goes through here (one seam for the atomic-save tests)."""
    f.write(buf)


def write(path, tensors, metadata=None, checksum=True) -> None:
    """Atomically write a safetensors file: a temp file in the same directory, fsync, rename, fsync the
    directory. On any failure the temp file is removed and an existing file at ``path`` is untouched."""
    path = os.fspath(path)
    head, arrays = encode(tensors, metadata, checksum)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = _create_temp(directory, os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            _write_bytes(f, head)
            for a in arrays:
                _write_bytes(f, _raw(a))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def _create_temp(directory, base):
    # os.open with mode 0o666 lets the umask decide permissions, as for a plain open() (mkstemp uses 0o600)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"safetensors write: could not create a temporary file in {directory}")


def _fsync_dir(directory) -> None:
    """Make the rename durable; platforms that cannot open directories (Windows) skip it."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse to fsync a directory; the file itself is already durable
        pass
    finally:
        os.close(fd)


# ---- reading --------------------------------------------------------------------------------
def read(path, verify=True) -> Container:
    """Map ``path`` read-only and validate it; tensors are zero-copy read-only views of the mapping.

    ``verify`` checks the file's SHA-256 when the writer stored one (ember always does).
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise FormatError(f"{path}: file is {size} bytes, shorter than the 8-byte header length field")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return parse(mm, path, verify=verify, _mm=mm)
    except BaseException:
        try:
            mm.close()
        except BufferError:  # never hide the real error behind this one
            pass
        raise


def parse(buf, source="<buffer>", verify=True, _mm=None) -> Container:
    """Validate a whole file held in ``buf`` (bytes, mmap, ...); ``source`` names it in error messages."""
    size = len(buf)
    if size < 8:
        raise FormatError(f"{source}: file is {size} bytes, shorter than the 8-byte header length field")
    (n,) = struct.unpack("<Q", bytes(buf[:8]))
    if n > MAX_HEADER_BYTES:
        raise FormatError(f"{source}: header length {n} (file bytes 0..8) is over the {MAX_HEADER_BYTES} byte limit")
    if 8 + n > size:
        raise FormatError(f"{source}: header length {n} (file bytes 0..8) runs past the end of the "
                          f"{size}-byte file")
    raw_header = bytes(buf[8:8 + n])
    header = _decode_header(raw_header, source)
    data_start, data_size = 8 + n, size - 8 - n
    metadata = _check_metadata(header.pop("__metadata__", {}), source)
    infos = [_check_entry(name, entry, data_size, source) for name, entry in header.items()]
    _check_layout(infos, data_size, data_start, source)
    if verify:
        if CHECKSUM_KEY in metadata:
            _verify_checksum(buf, raw_header, metadata[CHECKSUM_KEY], source)
        elif metadata.get("format", "").startswith("ember."):
            raise FormatError(f"{source}: __metadata__ says format {metadata['format']!r:.80} but has no "
                              f"{CHECKSUM_KEY!r}, which ember always writes (the file is damaged; "
                              f"verify=False skips the check)")
    for name, dt, _, begin, end in infos:
        if dt.kind == "b" and _bad_bools(buf, data_start + begin, end - begin):
            raise FormatError(f"{source}: tensor {name!r} (BOOL) holds bytes other than 0 and 1 "
                              f"(file bytes {data_start + begin}..{data_start + end})")
    tensors = {name: np.frombuffer(buf, dtype=dt, count=(end - begin) // dt.itemsize,
                                   offset=data_start + begin).reshape(shape)
               for name, dt, shape, begin, end in infos}
    return Container(source, tensors, metadata, data_start, _mm)


def _bad_bools(buf, offset, nbytes) -> bool:
    # a helper frame, so no view of the mapping outlives the check (read() must be able to unmap on error)
    return nbytes > 0 and int(np.frombuffer(buf, dtype=np.uint8, count=nbytes, offset=offset).max()) > 1


def _reject_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise FormatError(f"has a duplicate key {k!r:.80}")
        out[k] = v
    return out


def _reject_constant(name):
    raise FormatError(f"has the non-standard JSON constant {name}")


def strict_json(text: str, what: str):
    """``json.loads`` that refuses duplicate keys and NaN/Infinity; errors are FormatErrors about ``what``."""
    try:
        return json.loads(text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
    except FormatError as e:
        raise FormatError(f"{what} {e}") from None
    except json.JSONDecodeError as e:
        raise FormatError(f"{what} is not valid JSON: {e.msg} (char {e.pos})") from None
    except (ValueError, RecursionError) as e:  # e.g. an integer with too many digits, absurd nesting
        raise FormatError(f"{what} cannot be read as JSON: {type(e).__name__}: {str(e)[:120]}") from None


def _decode_header(raw: bytes, source):
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{source}: header is not valid UTF-8 (file byte {8 + e.start})") from None
    header = strict_json(text, f"{source}: header")
    if not isinstance(header, dict):
        raise FormatError(f"{source}: header must be a JSON object, got {type(header).__name__}")
    return header


def _check_metadata(meta, source):
    if not isinstance(meta, dict):
        raise FormatError(f"{source}: __metadata__ must be a JSON object of strings, got {type(meta).__name__}")
    for k, v in meta.items():
        if not isinstance(v, str):
            raise FormatError(f"{source}: __metadata__[{k!r}] must be a string, got {type(v).__name__}")
    return meta


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_entry(name, entry, data_size, source):
    """(name, dtype, shape, begin, end) for one header entry, or a FormatError naming the tensor."""
    where = f"{source}: tensor {name!r}"
    if not isinstance(entry, dict):
        raise FormatError(f"{where}: header entry must be a JSON object, got {type(entry).__name__}")
    if sorted(entry) != list(_TENSOR_FIELDS):
        raise FormatError(f"{where}: header entry has keys {sorted(entry)}, expected exactly {list(_TENSOR_FIELDS)}")
    dtype_name, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype_name, str) or dtype_name not in DTYPES:
        raise FormatError(f"{where}: unknown dtype {dtype_name!r}; valid: {', '.join(DTYPES)}")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise FormatError(f"{where}: shape must be a list of non-negative integers, got {shape!r:.200}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        raise FormatError(f"{where}: data_offsets must be [begin, end] integers, got {offsets!r:.200}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise FormatError(f"{where}: data_offsets [{begin}, {end}] are outside the {data_size}-byte data section")
    dt = DTYPES[dtype_name]
    count = 1
    for d in shape:
        count *= d
    nbytes = count * dt.itemsize  # Python ints: no overflow, and nothing is allocated from it
    if nbytes >= 1 << 64:
        raise FormatError(f"{where}: shape {shape!r:.200} x {dtype_name} is {nbytes} bytes, overflowing 64 bits")
    if nbytes != end - begin:
        raise FormatError(f"{where}: shape {shape!r:.200} x {dtype_name} needs {nbytes} bytes, but data_offsets "
                          f"[{begin}, {end}] hold {end - begin}")
    return name, dt, tuple(shape), begin, end


def _check_layout(infos, data_size, data_start, source):
    """The byte ranges must tile the data section exactly: no gap, no overlap, nothing left over."""
    pos, prev = 0, None
    for name, _, _, begin, end in sorted(infos, key=lambda i: (i[3], i[4])):
        if begin > pos:
            after = f"after tensor {prev!r}" if prev is not None else "at the start of the data section"
            raise FormatError(f"{source}: gap of {begin - pos} bytes {after} (data bytes {pos}..{begin}, "
                              f"file bytes {data_start + pos}..{data_start + begin}) before tensor {name!r}")
        if begin < pos:
            raise FormatError(f"{source}: tensor {name!r} (data bytes {begin}..{end}) overlaps tensor {prev!r} "
                              f"(which ends at data byte {pos})")
        pos, prev = end, name
    if pos != data_size:
        raise FormatError(f"{source}: data section is {data_size} bytes but the tensors cover only {pos} "
                          f"(file bytes {data_start + pos}..{data_start + data_size} belong to no tensor)")


def _verify_checksum(buf, raw_header: bytes, expected, source):
    """Hash the file as the writer did: the digest's own 64 hex digits count as '0's."""
    if len(expected) != 64 or expected.strip("0123456789abcdef"):
        raise FormatError(f"{source}: __metadata__[{CHECKSUM_KEY!r}] must be 64 lowercase hex digits, "
                          f"got {expected!r:.80}")
    field = _digest_field(expected)
    if raw_header.count(field) != 1:
        raise FormatError(f"{source}: the header does not hold the checksum entry {field.decode()} verbatim "
                          f"exactly once, so the file cannot be verified (verify=False skips the check)")
    h = hashlib.sha256(bytes(buf[:8]))
    h.update(raw_header.replace(field, _digest_field(_ZERO_DIGEST)))
    data_start = 8 + len(raw_header)
    with memoryview(buf) as view:
        for i in range(data_start, len(view), _HASH_CHUNK):
            with view[i:i + _HASH_CHUNK] as chunk:
                h.update(chunk)
    if h.hexdigest() != expected:
        raise FormatError(f"{source}: the file fails its SHA-256 check (header says {expected}, the file hashes "
                          f"to {h.hexdigest()}): it is corrupted or was modified after writing")
