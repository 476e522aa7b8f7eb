"""ember.quantize: int8 quantization modelled on torch.ao.quantization, with ONNX's arithmetic.

Built so far: the quantization primitives (``quantize_per_tensor``, ``quantize_per_channel``,
``dequantize``, ``fake_quantize_per_*_affine``; registry ops in ``ember.ops.quantized``, so they trace,
save and export), observers, ``QConfig``, ``FakeQuantize``, dynamic quantization (``quantize_dynamic`` ->
``ember.quantize.nn.DynamicLinear``) and static post-training quantization (``fuse_modules``,
``prepare`` -> ``calibrate`` -> ``convert``, or ``quantize_static``; ``ember.quantize.nn.Linear`` /
``Conv2d``) and quantization-aware training (``prepare_qat`` -> train -> ``convert``; Conv+BatchNorm fused by
``fuse_modules_qat`` trains with the BatchNorm folded in, ``freeze_bn_stats`` / ``update_bn_stats``), on numba
int8 kernels. The runtime's Q/DQ folding and the int8 speed come next: docs/quantize-design.md.
"""
from ember.ops.quantized import (  # noqa: F401
    dequantize, fake_quantize_per_channel_affine, fake_quantize_per_tensor_affine, quantize_per_channel,
    quantize_per_tensor,
)

from .fake_quantize import (  # noqa: F401
    FakeQuantize, FakeQuantizeBase, FixedQParamsFakeQuantize, default_dynamic_fake_quant, default_fake_quant,
    default_fixed_qparams_range_0to1_fake_quant, default_fixed_qparams_range_neg1to1_fake_quant,
    default_histogram_fake_quant, default_per_channel_weight_fake_quant, default_weight_fake_quant,
    disable_fake_quant, disable_observer, enable_fake_quant, enable_observer,
)
from .observer import (  # noqa: F401
    FixedQParamsObserver, HistogramObserver, MinMaxObserver, MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver, NoopObserver, ObserverBase, PerChannelMinMaxObserver, PlaceholderObserver,
    default_dynamic_quant_observer, default_histogram_observer, default_observer, default_per_channel_weight_observer,
    default_placeholder_observer, default_weight_observer, per_channel_affine, per_channel_symmetric,
    per_tensor_affine, per_tensor_symmetric,
)
from . import nn  # noqa: F401
from .workflows import quantize_dynamic, summary  # noqa: F401
from .static import DeQuantStub, QuantStub, calibrate, convert, prepare, quantize_static  # noqa: F401
from .fuse import (  # noqa: F401
    BNReLU2d, ConvBn2d, ConvBnReLU2d, ConvReLU2d, LinearReLU, fuse_known_modules, fuse_modules, fuse_modules_qat,
)
from .qat import (  # noqa: F401
    QATConv2d, QATConvBn2d, QATConvBnReLU2d, QATLinear, freeze_bn_stats, prepare_qat, update_bn_stats,
)
from .qconfig import (  # noqa: F401
    QConfig, default_dynamic_qconfig, default_per_channel_qconfig, default_qat_qconfig, default_qconfig,
    get_default_qat_qconfig, get_default_qconfig, per_channel_7bit_dynamic_qconfig, per_channel_dynamic_qconfig,
    qconfig_equals,
)
