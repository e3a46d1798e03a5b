"""Preparing a model for compression: NNCF wrapping that can be undone, graph building, weight discovery.

Everything here either succeeds or leaves the model as it was (see :func:`wrapping_transaction`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from nncf.common.graph import NNCFNode
from nncf.common.graph.layer_attributes import Dtype
from nncf.torch.function_hook.hook_storage import HookStorage
from nncf.torch.function_hook.nncf_graph.layer_attributes import PT2OpLayerAttributes
from nncf.torch.function_hook.nncf_graph.nncf_graph_builder import build_nncf_graph
from nncf.torch.function_hook.pruning.prune_model import OPERATORS_WITH_WEIGHTS_METATYPES
from nncf.torch.function_hook.wrapper import ATR_HOOK_STORAGE, get_hook_storage, is_wrapped, wrap_model
from nncf.torch.graph.graph import PTNNCFGraph
from nncf.torch.model_graph_manager import get_const_node, get_module_by_name, split_const_name
from torch import nn
from torch.utils._pytree import tree_map_only

from nncf_ext.errors import ModelError
from nncf_ext.macs import op_macs
from nncf_ext.scopes import WeightInfo


def check_wrappable(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise ModelError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if type(model) is nn.Sequential:
        raise ModelError(
            "a top-level nn.Sequential cannot be wrapped by NNCF 3.4 (its hook storage would become a "
            "layer); wrap it in a module whose forward calls the Sequential"
        )


def unwrap_model(model: nn.Module) -> None:
    """Undo :func:`nncf.torch.function_hook.wrap_model` on a model that has no hooks we must keep."""
    model.__dict__.pop("forward", None)
    model.__dict__.pop("_replicate_for_data_parallel", None)
    model._modules.pop(ATR_HOOK_STORAGE, None)


@contextmanager
def wrapping_transaction(model: nn.Module) -> Iterator[nn.Module]:
    """Wrap ``model`` with NNCF; if the body raises, remove the hooks it added and unwrap if we wrapped."""
    check_wrappable(model)
    was_wrapped = is_wrapped(model)
    before = (
        {name for name, _ in get_hook_storage(model).named_hooks(remove_duplicate=False)}
        if was_wrapped
        else set()
    )
    wrapped = wrap_model(model)
    try:
        yield wrapped
    except BaseException:
        if not was_wrapped:
            unwrap_model(model)
        else:
            storage = get_hook_storage(model)
            added = [n for n, _ in storage.named_hooks(remove_duplicate=False) if n not in before]
            for name in added:
                storage.delete_hook(name)
        raise


def run_model(model: nn.Module, example_input: Any) -> Any:
    if isinstance(example_input, dict):
        return model(**example_input)
    if isinstance(example_input, tuple):
        return model(*example_input)
    return model(example_input)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside (BatchNorm uses and keeps its running statistics, no dropout); every submodule's own
    mode restored after."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


@contextmanager
def frozen_state(model: nn.Module) -> Iterator[None]:
    """Run forward passes that change nothing: eval mode (no BN statistics update) and no grad."""
    with eval_mode(model), torch.no_grad():
        yield


def example_like_model(model: nn.Module, example_input: Any) -> Any:
    """``example_input`` with its floating-point tensors on the device and in the dtype of the model's
    parameters, which may have moved since it was given (Lightning moves and casts the model after the
    compression was created)."""
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    if param is None:
        return example_input

    def move(t: torch.Tensor) -> torch.Tensor:
        return t.to(param.device, param.dtype) if t.is_floating_point() else t.to(param.device)

    return tree_map_only(torch.Tensor, move, example_input)


def check_example_input(model: nn.Module, example_input: Any) -> None:
    """Run the model once on ``example_input``, turning a rejection into a clear error."""
    try:
        with frozen_state(model):
            run_model(model, example_input)
    except Exception as e:
        shape = (
            tuple(example_input.shape)
            if isinstance(example_input, torch.Tensor)
            else type(example_input).__name__
        )
        raise ModelError(f"the model rejects the example input {shape}: {type(e).__name__}: {e}") from e


def build_graph(model: nn.Module, example_input: Any) -> PTNNCFGraph:
    """NNCF graph of a wrapped model as if it had no hooks, built without touching its state."""
    storage = model._modules[ATR_HOOK_STORAGE]
    model._modules[ATR_HOOK_STORAGE] = HookStorage()
    try:
        with frozen_state(model):
            return build_nncf_graph(model, example_input)
    finally:
        model._modules[ATR_HOOK_STORAGE] = storage


def find_weights(model: nn.Module, graph: PTNNCFGraph) -> list[WeightInfo]:
    """Weight constants of the operations NNCF considers weighted (conv, linear, embedding, matmul)."""
    ops: dict[str, list[tuple[str, str, int | None, int | None]]] = {}
    for node in graph.topological_sort():
        if node.metatype not in OPERATORS_WITH_WEIGHTS_METATYPES:
            continue
        attrs = node.layer_attributes
        if not isinstance(attrs, PT2OpLayerAttributes):
            continue
        activation = activation_port(graph, node, attrs.constant_port_ids)
        for port in sorted(attrs.constant_port_ids.intersection(node.metatype.weight_port_ids)):
            const = get_const_node(node, port, graph)
            if const is not None:
                consumers = ops.setdefault(const.node_name, [])
                if any(name == node.node_name for name, _, _, _ in consumers):  # w @ w: the op's MACs once
                    macs: int | None = 0
                else:
                    macs = op_macs(graph, node, port, tuple(graph.get_output_edges(const)[0].tensor_shape))
                consumers.append((node.node_name, node.node_type, activation, macs))
    weights = []
    for const_name, consumers in ops.items():
        module_name, attr = split_const_name(const_name)
        module = get_module_by_name(module_name, model)
        tensor = getattr(module, attr)
        weights.append(
            WeightInfo(
                name=const_name,
                module_name=module_name,
                module_type=type(module).__name__,
                op_names=tuple(n for n, _, _, _ in consumers),
                op_types=tuple(t for _, t, _, _ in consumers),
                shape=tuple(tensor.shape),
                activation_ports=tuple(a for _, _, a, _ in consumers),
                op_macs=tuple(m for _, _, _, m in consumers),
            )
        )
    return weights


def activation_port(graph: PTNNCFGraph, node: NNCFNode, constant_ports: set[int]) -> int | None:
    """The input port of ``node`` that carries its floating-point activation: the first input that is not a
    constant (port 1 of ``W @ x``, port 0 of a convolution); None when there is none (an embedding's indices
    are integers)."""
    for edge in sorted(graph.get_input_edges(node), key=lambda e: e.input_port_id):
        if edge.input_port_id not in constant_ports and edge.dtype == Dtype.FLOAT:
            return edge.input_port_id
    return None


def find_other_constants(model: nn.Module, graph: PTNNCFGraph, weights: list[WeightInfo]) -> list[WeightInfo]:
    """Floating-point parameters in the graph that no weighted operation consumes (e.g. NetVLAD centroids)."""
    taken = {w.name for w in weights}
    params = {name: p for name, p in model.named_parameters() if p.is_floating_point()}
    out = []
    for node in graph.topological_sort():
        if node.node_name in taken or node.node_name not in params:
            continue
        module_name, _ = split_const_name(node.node_name)
        consumers = [e.to_node for e in graph.get_output_edges(node)]
        out.append(
            WeightInfo(
                name=node.node_name,
                module_name=module_name,
                module_type=type(get_module_by_name(module_name, model)).__name__,
                op_names=tuple(n.node_name for n in consumers),
                op_types=tuple(n.node_type for n in consumers),
                shape=tuple(params[node.node_name].shape),
                weighted=False,
            )
        )
    return out


def get_weight(model: nn.Module, name: str) -> torch.Tensor:
    """The parameter (or buffer) behind a weight constant name such as ``features.0.weight``."""
    module_name, attr = split_const_name(name)
    return getattr(get_module_by_name(module_name, model), attr)


def check_finite(model: nn.Module, weights: list[WeightInfo]) -> None:
    for w in weights:
        tensor = get_weight(model, w.name)
        if not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise ModelError(
                f"weight '{w.name}' has {bad} NaN or Inf values; fix the model before compressing it"
            )


def model_weights(model: nn.Module, example_input: Any) -> list[WeightInfo]:
    """The weight constants of ``model`` (NNCF's graph), leaving the model exactly as it was."""
    check_example_input(model, example_input)
    was_wrapped = is_wrapped(model)
    with wrapping_transaction(model) as wrapped:
        weights = find_weights(wrapped, build_graph(wrapped, example_input))
    if not was_wrapped:
        unwrap_model(model)
    return weights
