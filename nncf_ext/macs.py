"""Multiply-accumulates of NNCF's weighted operations, from the tensor shapes of the NNCF graph.

The counts are those of the graph's example input, its batch included: BOPs budgets compare them as ratios,
in which the batch cancels for every op whose activations carry it. Each op multiplies every weight by a
number of activations:

* ``conv1d`` / ``conv2d`` / ``conv3d``: every output element is ``weight[c].numel()`` MACs (groups and
  dilation included, as the weight's shape says);
* ``conv_transpose*``: every input element scatters through ``weight[c_in].numel()`` weights;
* ``linear``: every output element is ``in_features`` MACs;
* ``matmul`` and its aliases: every output element is the contracted dimension's length in MACs;
* ``embedding`` / ``embedding_bag``: lookups, no multiplies (0; ``per_sample_weights`` are not counted).

An op with the weight on two ports (``w @ w``) is counted once, on the first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from nncf.common.graph import NNCFNode
from nncf.torch.graph.graph import PTNNCFGraph

CONVOLUTIONS = ("conv1d", "conv2d", "conv3d")
TRANSPOSED = ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
MATMULS = ("matmul", "__matmul__", "mm", "bmm")  # the weight on port 0 is the left operand
LOOKUPS = ("embedding", "embedding_bag")


def _numel(shape: Sequence[int]) -> int:
    return math.prod(int(s) for s in shape)


def op_macs(graph: PTNNCFGraph, node: NNCFNode, port: int, weight_shape: Sequence[int]) -> int | None:
    """MACs of ``node`` with its weight of ``weight_shape`` on input ``port``; None for an op type (or a
    shape) this module cannot count."""
    op = node.node_type
    if op in LOOKUPS:
        return 0
    outputs = graph.get_output_edges(node)  # none when the op's output is never used
    if not outputs or outputs[0].tensor_shape is None or not weight_shape:
        return None
    out = _numel(outputs[0].tensor_shape)  # a scalar's shape is (): one element
    if op in CONVOLUTIONS:
        return out * _numel(weight_shape[1:])
    if op == "linear":  # a 1-D weight (in_features,) gives one output per input row
        return out * int(weight_shape[-1])
    if op in TRANSPOSED:
        inputs = [
            e for e in graph.get_input_edges(node) if e.input_port_id == 0 and e.tensor_shape is not None
        ]
        return _numel(inputs[0].tensor_shape) * _numel(weight_shape[1:]) if inputs else None
    if op in MATMULS or op == "__rmatmul__":
        left = (port == 0) == (op != "__rmatmul__")  # x.__rmatmul__(w) is w @ x: port 1 is the left operand
        if len(weight_shape) == 1:
            return out * int(weight_shape[0])
        return out * int(weight_shape[-1] if left else weight_shape[-2])
    return None
