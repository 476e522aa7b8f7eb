"""ember.export: ONNX export of traced Programs (``to_onnx``), checked with ``onnx.checker`` and tested
against ONNX Runtime and ``onnx.reference``. Lowerings live per op family in ``ops_*.py``."""
from .lowering import ExportError, lowering_table  # noqa: F401
from . import ops_elementwise, ops_index, ops_loss, ops_nn, ops_quantized, ops_reduce, ops_refused, ops_shape  # noqa: F401  (register the lowerings)
from .onnx_export import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, build_model, to_onnx  # noqa: F401

__all__ = ["to_onnx", "build_model", "ExportError", "DEFAULT_OPSET", "MIN_OPSET", "MAX_OPSET"]
