"""``ember`` command line. ``ember info FILE [--code] [--json]`` describes a ``.ember`` program
(signature, op counts, constants, metadata) or a checkpoint written by ``ember.save``;
``ember export MODEL.ember -o MODEL.onnx [--opset N]`` converts a saved program to ONNX;
``ember serve PATH`` serves models over HTTP (cli/serve.py).

Bad or missing files print one message to stderr and exit with status 2: never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter

import numpy as np

import ember
from ember import safetensors_io
from ember import serialization as checkpoint
from ember import serialize

EXIT_BAD_FILE = 2


class _BadFile(Exception):
    """A file the command cannot describe; the message is what the user sees."""


# ---- gathering ------------------------------------------------------------------------------
def describe(path) -> dict:
    """Everything ``ember info`` shows about ``path``, as JSON data; raises _BadFile for unusable files."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise _BadFile(f"{path}: no such file")
    if os.path.isdir(path):
        raise _BadFile(f"{path}: is a directory, not a file")
    try:
        c = safetensors_io.read(path)
        try:
            meta = dict(c.metadata)
            tensors = {name: (v.dtype.name, tuple(v.shape), int(v.nbytes)) for name, v in c.tensors.items()}
        finally:
            c.close()
        info = {"file": path, "file_bytes": os.path.getsize(path)}
        fmt = meta.get("format")
        if fmt == serialize.archive.FORMAT:
            # the container (and its checksum) was checked above; load checks everything else
            info.update(_describe_program(serialize.load(path, verify=False), meta))
        else:
            info.update(_describe_checkpoint(path, meta, tensors, fmt))
        return info
    except safetensors_io.FormatError as e:
        raise _BadFile(str(e)) from None
    except OSError as e:
        raise _BadFile(f"{path}: cannot read: {e.strerror or e}") from None


def _describe_program(prog, meta) -> dict:
    graph = prog.graph
    consts = graph.constants
    return {
        "kind": "program",
        "format": meta["format"],
        "format_version": meta["format_version"],
        "producer": meta["producer"],
        "signature": prog.signature,
        "nodes": len(graph.nodes),
        "ops": dict(sorted(Counter(n.op for n in graph.nodes).items(), key=lambda kv: (-kv[1], kv[0]))),
        "constants": len(consts),
        "parameters": sum(int(np.prod(a.shape, dtype=np.int64)) for a in consts.values()),
        "parameter_bytes": sum(int(a.nbytes) for a in consts.values()),
        "metadata": dict(prog.metadata),
        "code": prog.code,
    }


def _describe_checkpoint(path, meta, tensors, fmt) -> dict:
    if fmt is not None and fmt != checkpoint.FORMAT:
        raise _BadFile(f"{path}: __metadata__['format'] is {fmt!r:.80}; ember info reads "
                       f"{serialize.archive.FORMAT!r} and {checkpoint.FORMAT!r} files and plain safetensors files")
    obj = checkpoint.load(path, mmap=True, verify=False)  # validates the structure; tensors stay mapped
    out = {
        "kind": "checkpoint" if fmt else "safetensors",
        "format": fmt or "safetensors",
        "format_version": meta.get("format_version"),
        "producer": meta.get("producer"),
        "tensors": [{"name": n, "dtype": dt, "shape": list(shape), "bytes": nbytes}
                    for n, (dt, shape, nbytes) in tensors.items()],
        "tensor_bytes": sum(nbytes for _, _, nbytes in tensors.values()),
        "values": {},
    }
    if fmt:
        _plain_values(obj, "", out["values"])
    else:  # a plain safetensors file's own metadata is free-form text
        out["metadata"] = {k: v for k, v in meta.items() if k != safetensors_io.CHECKSUM_KEY}
    return out


def _plain_values(obj, where, out) -> None:
    """The checkpoint's non-tensor leaves (epoch, hyperparameters ...) by their path in the object."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _plain_values(v, f"{where}/{k}" if where else str(k), out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _plain_values(v, f"{where}[{i}]", out)
    elif not isinstance(obj, ember.Tensor):
        out[where or "(root)"] = obj


# ---- printing -------------------------------------------------------------------------------
def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _shape(dtype, shape) -> str:
    return f"{dtype}[{', '.join(str(d) for d in shape)}]"


def format_info(info: dict, code: bool = False) -> str:
    """The human-readable ``ember info`` text for what ``describe`` returned."""
    lines = [f"file:        {info['file']} ({_size(info['file_bytes'])})"]
    version = f" {info['format_version']}" if info.get("format_version") else ""
    if info["kind"] == "program":
        lines.append(f"format:      {info['format']}{version} (a traced program; load with ember.serialize.load)")
    elif info["kind"] == "checkpoint":
        lines.append(f"format:      {info['format']}{version} (a checkpoint; load with ember.load)")
    else:
        lines.append("format:      plain safetensors (no ember metadata; ember.load reads its tensors)")
    if info.get("producer"):
        lines.append(f"producer:    {info['producer']}")
    if info["kind"] == "program":
        lines += _program_lines(info, code)
    else:
        lines += _checkpoint_lines(info)
    return "\n".join(lines)


def _program_lines(info, code):
    sig = info["signature"]
    lines = ["inputs:"] + [f"  {d['name']}: {_shape(d['dtype'], d['shape'])}" for d in sig["inputs"]]
    lines += ["outputs:"] + [f"  {d['name']}: {_shape(d['dtype'], d['shape'])}" for d in sig["outputs"]]
    lines.append(f"ops:         {info['nodes']} nodes")
    width = max((len(op) for op in info["ops"]), default=0)
    lines += [f"  {op:<{width}}  {n}" for op, n in info["ops"].items()]
    lines.append(f"parameters:  {info['parameters']:,} in {info['constants']} constants "
                 f"({_size(info['parameter_bytes'])})")
    lines += _metadata_lines(info["metadata"])
    if code:
        lines += ["", info["code"]]
    return lines


def _checkpoint_lines(info):
    tensors = info["tensors"]
    lines = [f"tensors:     {len(tensors)} ({_size(info['tensor_bytes'])})"]
    width = max((len(t["name"]) for t in tensors), default=0)
    lines += [f"  {t['name']:<{width}}  {_shape(t['dtype'], t['shape'])}" for t in tensors]
    if info["values"]:
        lines.append("values:")
        lines += [f"  {k}: {v!r}" for k, v in info["values"].items()]
    if "metadata" in info:
        lines += _metadata_lines(info["metadata"])
    return lines


def _metadata_lines(meta):
    if not meta:
        return ["metadata:    (none)"]
    return ["metadata:"] + [f"  {k}: {v}" for k, v in sorted(meta.items())]


# ---- commands -------------------------------------------------------------------------------
def cmd_info(args) -> int:
    try:
        info = describe(args.file)
    except _BadFile as e:
        print(f"ember info: {e}", file=sys.stderr)
        return EXIT_BAD_FILE
    if args.json:
        if not args.code:
            info.pop("code", None)
        print(json.dumps(info, indent=2, ensure_ascii=False))
    else:
        print(format_info(info, code=args.code))
    return 0


def cmd_export(args) -> int:
    from ember import export  # imports onnx: only this command pays for it

    src = args.file
    dst = args.output or os.path.splitext(src)[0] + ".onnx"
    try:
        describe(src)  # the same checks and messages as `ember info` for missing / bad files
        prog = serialize.load(src)
        model = export.to_onnx(prog, dst, opset=args.opset)
    except _BadFile as e:
        print(f"ember export: {e}", file=sys.stderr)
        return EXIT_BAD_FILE
    except (export.ExportError, ValueError) as e:
        print(f"ember export: {src}: {e}", file=sys.stderr)
        return EXIT_BAD_FILE
    except OSError as e:
        print(f"ember export: cannot write {dst}: {e.strerror or e}", file=sys.stderr)
        return EXIT_BAD_FILE
    print(format_export(dst, model))
    return 0


def format_export(path, model) -> str:
    """What ``ember export`` prints: the file, opset, inputs/outputs with dims, and ONNX op counts."""
    def dims(vi):
        t = vi.type.tensor_type
        shape = ", ".join(d.dim_param or str(d.dim_value) for d in t.shape.dim)
        return f"{onnx_type_name(t.elem_type)}[{shape}]"

    ops = Counter(n.op_type for n in model.graph.node)
    width = max((len(op) for op in ops), default=0)
    lines = [f"wrote:       {path} ({_size(os.path.getsize(path))})",
             f"opset:       {model.opset_import[0].version} (ir_version {model.ir_version})",
             "inputs:"] + [f"  {v.name}: {dims(v)}" for v in model.graph.input]
    lines += ["outputs:"] + [f"  {v.name}: {dims(v)}" for v in model.graph.output]
    lines.append(f"nodes:       {len(model.graph.node)}")
    lines += [f"  {op:<{width}}  {k}" for op, k in sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))]
    return "\n".join(lines)


def onnx_type_name(elem_type) -> str:
    from onnx import helper

    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ember", description="ember: inspect, convert and serve saved models and checkpoints.")
    ap.add_argument("--version", action="version", version=f"ember {ember.__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = sub.add_parser("info", help="describe a .ember program or a checkpoint",
                          description="Describe a .ember program (signature, ops, parameters, metadata) or a "
                                      "checkpoint written by ember.save (tensor names, shapes, dtypes).")
    info.add_argument("file", help="a .ember program, or a checkpoint / safetensors file")
    info.add_argument("--code", action="store_true", help="also print the program's graph listing")
    info.add_argument("--json", action="store_true", help="print the description as JSON")
    info.set_defaults(func=cmd_info)
    exp = sub.add_parser("export", help="convert a .ember program to ONNX",
                         description="Convert a saved .ember program to an ONNX model (checked with onnx.checker) "
                                     "and print its opset, inputs/outputs and node counts by op type.")
    exp.add_argument("file", help="a .ember program (from ember.serialize.save)")
    exp.add_argument("-o", "--output", help="the .onnx file to write (default: the input's name with .onnx)")
    exp.add_argument("--opset", type=int, default=None,
                     help="ONNX opset to target (default: the newest ember is tested with)")
    exp.set_defaults(func=cmd_export)
    from .serve import add_parser as add_serve  # the server's imports wait until the command runs

    add_serve(sub)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `ember info --code FILE | head`: the reader left early, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (the recipe in Python's signal docs)
        return 0


if __name__ == "__main__":
    sys.exit(main())
