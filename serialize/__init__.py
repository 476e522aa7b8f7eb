"""ember.serialize: capture models as graphs, run them, save them as safe ``.ember`` files.

Built so far: the IR (``ir``), the executor (``runtime``), ``Program``, the tracer (``trace``)
and the ``.ember`` archive (``save`` / ``load``, docs/format.md); ``ember info`` lives in ``ember.cli``.
Programs run an optimised copy of their graph (``passes``: identity removal, constant folding,
Conv/Linear+BatchNorm folding, Linear/Conv+activation fusion); the saved graph stays unfused.
"""
from .ir import Graph, Node, Sym, Value  # noqa: F401
from .program import Program  # noqa: F401
from .runtime import Executor  # noqa: F401
from .tracer import SymInt, TraceError, trace  # noqa: F401
from .archive import FormatError, load, save  # noqa: F401
