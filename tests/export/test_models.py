"""Whole models exported to ONNX and run in ONNX Runtime (and onnx.reference) at batch sizes 1, 2 and 37:
an MLP with dropout and GELU, a CNN with BatchNorm and pooling, a transformer block with a dynamic
sequence length, a model with shared weights, and one with several inputs and outputs."""
from __future__ import annotations

import numpy as np
import pytest

import ember
import ember.nn as nn
import ember.nn.functional as F
from ember.export import DEFAULT_OPSET, MIN_OPSET
from ember.serialize import trace
from reference_models import CNN, MLP, Block, warm_batchnorm

from .onnx_check import check_export

BATCHES = (1, 2, 37)
rng = np.random.default_rng(11)


class Tied(nn.Module):
    """An encoder/decoder sharing one weight (as tied embeddings do): one initializer in the file."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(6, 4, bias=False)

    def forward(self, x):
        h = F.relu(self.enc(x))
        return h @ self.enc.weight  # the decoder is the encoder's weight, transposed


class TwoHeads(nn.Module):
    """Two inputs (an image and a feature vector), two outputs (class scores and a regression value)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc_img = nn.Linear(4 * 4 * 4, 8)
        self.fc_feat = nn.Linear(5, 8)
        self.cls, self.reg = nn.Linear(8, 3), nn.Linear(8, 1)

    def forward(self, image, features):
        h = F.max_pool2d(F.relu(self.conv(image)), 2).flatten(1)
        z = F.relu(self.fc_img(h) + self.fc_feat(features))
        return F.log_softmax(self.cls(z), dim=1), self.reg(z).squeeze(1)


def _floats(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def _cases():
    ember.manual_seed(0)
    cnn = CNN()
    warm_batchnorm(cnn, (8, 3, 8, 8), rng)
    return {
        "mlp": (MLP().eval(), [_floats(4, 20)], None),
        "cnn": (cnn.eval(), [_floats(4, 3, 8, 8)], None),
        "block": (Block().eval(), [rng.integers(0, 23, (4, 7)).astype(np.int64)], {"idx": {0: "batch", 1: "seq"}}),
        "tied": (Tied().eval(), [_floats(4, 6)], None),
        "two_heads": (TwoHeads().eval(), [_floats(4, 1, 8, 8), _floats(4, 5)], None),
    }


CASES = _cases()


@pytest.mark.parametrize("opset", [DEFAULT_OPSET, MIN_OPSET])
@pytest.mark.parametrize("name", list(CASES))
def test_model_runs_in_onnxruntime_like_ember(name, opset):
    model, inputs, axes = CASES[name]
    onnx_model = check_export(model, inputs, opset=opset, batches=BATCHES, dynamic_axes=axes)
    graph = onnx_model.graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert all(o.type.tensor_type.shape.dim[0].dim_param == "batch" for o in graph.output)


def test_transformer_block_at_other_sequence_lengths():
    model, _, axes = CASES["block"]
    tokens = rng.integers(0, 23, (3, 7)).astype(np.int64)
    prog = trace(model, ember.tensor(tokens), dynamic_axes=axes)
    assert [d.dim_param for d in _dims(check_export(prog, [tokens]).graph.input[0])] == ["batch", "seq"]
    for b, t in ((1, 1), (2, 12), (5, 3)):
        check_export(prog, [rng.integers(0, 23, (b, t)).astype(np.int64)])


def test_shared_weight_is_stored_once():
    model, inputs, _ = CASES["tied"]
    onnx_model = check_export(model, inputs)
    big = [i for i in onnx_model.graph.initializer if np.prod(i.dims) > 1]
    assert len(big) == 1, [i.name for i in big]


def _dims(value_info):
    return value_info.type.tensor_type.shape.dim
