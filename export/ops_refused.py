"""Ops with no ONNX lowering, and why: the gradient ops of the backward pass."""
from .lowering import refuses

# Training graphs are not exported: these appear only when a model computes gradients inside its forward.
refuses([
    "adaptive_avg_pool2d_backward", "avg_pool2d_backward", "batch_norm_backward", "binary_cross_entropy_backward",
    "binary_cross_entropy_with_logits_backward", "clamp_backward", "conv2d_backward", "conv2d_maxpool_backward", "cross_entropy_backward",
    "cross_entropy_prob_backward", "dropout_backward", "embedding_backward", "gather_backward", "gelu_backward",
    "getitem_backward", "huber_loss_backward", "index_select_backward", "kl_div_backward", "l1_loss_backward",
    "layer_norm_backward", "leaky_relu_backward", "linear_weight_grad", "max_pool2d_backward", "mse_loss_backward",
    "nll_loss_backward", "pad_backward", "prod_backward", "relu_backward", "select_along_backward",
    "silu_backward", "smooth_l1_loss_backward", "softmax_backward",
], "it computes a gradient (an op of the backward pass); ONNX export covers inference graphs: export the model's "
   "forward, traced in eval mode")

# Random in training mode: the graph cannot reproduce the model's outputs.
refuses(["dropout"], "training-mode dropout draws a random mask per call; put the model in eval mode "
                     "(model.eval(), or F.dropout(..., training=False)) before tracing")

# Made by eager nn.Sequential for training, never by a tracer (which records conv2d and max_pool2d).
refuses(["conv2d_maxpool"], "conv2d_maxpool is the eager training path of nn.Sequential's Conv2d -> MaxPool2d(2), with "
                            "window codes ONNX has no form for; a traced model holds conv2d and max_pool2d instead: "
                            "export the model traced with ember.serialize.trace")
