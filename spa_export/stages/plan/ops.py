"""What each traced operation does to channels.

Every node of the traced network is classified into one of a few kinds:

* ``unary``: acts on each channel by itself (activation, batch-norm's affine
  map when it is a module, pooling, dropout in eval, identity);
* ``binary``: an elementwise combination of two tensors of the same channel
  count (residual addition, squeeze-and-excitation's product);
* ``cat``: concatenation along the channel axis;
* ``flatten``: ``[N, C, ...] -> [N, C * prod(...)]``;
* ``shape``: reads only shapes (``size``, ``dim``), never channel values;
* ``barrier``: anything else. Channels reaching a barrier are kept, and the
  report says which operation kept them.

Modules (convolutions, linear layers, batch-norm) are classified in
:mod:`spa_export.stages.plan.trace`, which sees their parameters.
"""

from __future__ import annotations

import operator

import torch

UNARY_FUNCTION_NAMES = {
    "relu", "relu6", "relu_", "hardswish", "hardsigmoid", "silu", "gelu", "sigmoid", "tanh",
    "leaky_relu", "elu", "selu", "celu", "mish", "softplus", "hardtanh", "dropout", "dropout2d",
    "avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
    "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
    "_max_pool1d", "_max_pool2d", "_max_pool3d", "_adaptive_max_pool1d", "_adaptive_max_pool2d",
    "stochastic_depth", "clamp", "contiguous", "clone", "float", "sigmoid_", "hardswish_",
    # elementwise (with a number, or a one-element tensor of parameters, as the other operand)
    "pow", "square", "sqrt", "rsqrt", "exp", "log", "abs", "neg", "reciprocal", "erf", "clamp_min",
    "clamp_max", "clip", "softsign", "tanhshrink", "logsigmoid", "hardshrink", "softshrink", "relu6_",
    "silu_", "gelu_", "sin", "cos", "to", "double", "half", "bfloat16",
}

UNARY_MODULE_NAMES = {
    "ReLU", "ReLU6", "LeakyReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish", "Hardswish",
    "Hardsigmoid", "Sigmoid", "Tanh", "Hardtanh", "Softplus", "Identity", "Dropout", "Dropout1d",
    "Dropout2d", "Dropout3d", "AlphaDropout", "MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d",
    "AvgPool2d", "AvgPool3d", "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d",
    "AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "AdaptiveMaxPool3d", "LPPool1d", "LPPool2d",
    "StochasticDepth",
    # spatial padding (the last 1, 2 or 3 axes; one that would pad channels changes their count: not followed)
    "ZeroPad1d", "ZeroPad2d", "ZeroPad3d", "ConstantPad1d", "ConstantPad2d", "ConstantPad3d",
    "ReflectionPad1d", "ReflectionPad2d", "ReflectionPad3d", "ReplicationPad1d", "ReplicationPad2d",
    "ReplicationPad3d", "CircularPad1d", "CircularPad2d", "CircularPad3d",
}

ADD_LIKE = {operator.add, operator.sub, operator.iadd, operator.isub, operator.truediv,
            operator.itruediv, torch.add, torch.sub, torch.div}
MUL_LIKE = {operator.mul, operator.imul, torch.mul}
ADD_METHODS = {"add", "add_", "sub", "sub_", "div", "div_"}
MUL_METHODS = {"mul", "mul_"}
SHAPE_METHODS = {"size", "dim", "numel"}
SHAPE_FUNCTIONS = {getattr, operator.getitem, operator.floordiv, operator.eq, torch._assert}

# In-place variants are run as their out-of-place twins while tracing, so that
# the recorded value of every node is the value its readers saw.
OUT_OF_PLACE = {operator.iadd: operator.add, operator.isub: operator.sub,
                operator.imul: operator.mul, operator.itruediv: operator.truediv}


def function_name(target: object) -> str:
    return getattr(target, "__name__", str(target))


def is_cat(target: object) -> bool:
    return target in (torch.cat, torch.concat, torch.concatenate)
