"""ember.serialize: capture models as graphs, run them, save them as safe ``.ember`` files.

Built so far: the IR (``ir``), the executor (``runtime``) and ``Program``. The tracer and the
``.ember`` archive are the next steps (docs/serialize-design.md).
"""
from .ir import Graph, Node, Sym, Value  # noqa: F401
from .program import Program  # noqa: F401
from .runtime import Executor  # noqa: F401
