"""Primitive ops. Importing this package registers every op family in the registry."""
from . import basic, elementwise, reduce, shape, linalg, index, conv, pool, norm, loss, nn_misc, sorting, symbolic, fused, conv_pool, linear_relu, quantized, qlinear, qfold, transfer  # noqa: F401
from .registry import OpDef, apply, get_op, list_ops, register_op, set_trace_hook, get_trace_hook  # noqa: F401
