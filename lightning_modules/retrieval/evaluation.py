"""Describe a revisited-format dataset with any model or callable and score it (mAP / mP@k)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from lightning_modules.data.revisited import RevisitedData, RevisitedEvalSet
from lightning_modules.metrics.retrieval import DEFAULT_KS, RevisitedMAP
from nncf_ext.errors import ModelError

Describer = nn.Module | Callable[[np.ndarray], Any]


def _first_output(out: Any) -> torch.Tensor:
    """A torch module's tensor, a numpy array, or the first output of a dict-like / sequence result."""
    if isinstance(out, torch.Tensor | np.ndarray):
        return torch.as_tensor(out)
    if isinstance(out, Mapping) or hasattr(out, "values"):  # dict, OpenVINO OVDict
        return torch.as_tensor(np.asarray(next(iter(out.values()))))
    if isinstance(out, list | tuple) and out:
        return torch.as_tensor(np.asarray(out[0]))
    raise ModelError(f"cannot read descriptors from a {type(out).__name__} model output")


@torch.no_grad()
def describe(model: Describer, batch: torch.Tensor) -> torch.Tensor:
    """``(N, D)`` descriptors of an image batch: a torch module gets the tensor, a callable a numpy array."""
    if isinstance(model, nn.Module):
        device = next(iter(model.parameters()), torch.empty(0)).device
        out = model(batch.to(device).contiguous(memory_format=torch.channels_last))
    else:
        out = model(batch.numpy())
    desc = _first_output(out).float().cpu()
    if desc.ndim != 2 or desc.shape[0] != batch.shape[0]:
        raise ModelError(f"model returned shape {tuple(desc.shape)} for a batch of {batch.shape[0]} images")
    return desc


def evaluate(
    model: Describer,
    data: RevisitedData,
    image_size: int,
    batch_size: int = 64,
    protocols: Sequence[str] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, float]:
    """mAP / mP@k of ``model`` on ``data`` (queries cropped), e.g. ``{"mAP_medium": 0.61, "mP@5_easy": ...}``.

    ``model`` is a torch module (run in eval mode, mode restored) or any callable taking a float32 numpy batch
    ``(N, 3, image_size, image_size)`` (ImageNet-normalised) and returning descriptors, such as an OpenVINO
    ``CompiledModel``. ``protocols`` defaults to those of the ground truth (:func:`default_protocols`).
    """
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    metric = RevisitedMAP(data.gnd, data.num_database, protocols, ks)
    try:
        for images, indices, is_query in DataLoader(
            RevisitedEvalSet(data, image_size), batch_size=batch_size
        ):
            metric.update(describe(model, images), indices, is_query)
    finally:
        if isinstance(model, nn.Module):
            model.train(was_training)
    return {k: float(v) for k, v in metric.compute().items()}
