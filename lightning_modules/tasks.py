"""The tasks the command line knows, and the portable ``compressed.pt`` artifact of a compressed model.

``compressed.pt`` holds plain data only (loadable with ``torch.load(..., weights_only=True)``): the task
name and hyper-parameters to rebuild the network, NNCF's hook config and the state dict.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

import nncf_ext
from nncf_ext.errors import CheckpointError, ConfigError
from nncf_ext.export.archive import MAGIC as ARCHIVE_MAGIC
from nncf_ext.files import atomic_file

FORMAT = "nncf-ext/compressed-model/1"


@dataclass(frozen=True)
class Task:
    """How to build a task's LightningModule and its data."""

    name: str
    module: Callable[..., pl.LightningModule]
    # (data: str | None, batch_size: int | None, seed: int, hparams: the module's, for the data it needs)
    datamodule: Callable[..., pl.LightningDataModule]
    # a batch of real inputs from the datamodule: NNCF's graph and the initial activation ranges
    example_input: Callable[[pl.LightningDataModule], torch.Tensor]
    description: str


def _toy_module(**hparams: Any) -> pl.LightningModule:
    from lightning_modules.toy.module import ToyModule

    return ToyModule(**hparams)


def _toy_data(
    data: str | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    hparams: Mapping[str, Any] | None = None,
) -> pl.LightningDataModule:
    from lightning_modules.toy.module import ToyDataModule

    if data is not None:
        raise ConfigError("--data", f"the toy task generates its data; it cannot read {data}")
    return ToyDataModule(batch_size=batch_size or 64, seed=seed)


def _toy_example(datamodule: pl.LightningDataModule) -> torch.Tensor:
    datamodule.setup("fit")
    return datamodule.train.tensors[0][:32]  # type: ignore[attr-defined]


def _retrieval_module(
    arch: str = "small",
    widths: tuple[int, ...] | list[int] = (16, 32, 64, 64),
    num_clusters: int = 16,
    whitening_dim: int = 256,
    image_size: int = 64,
    **module_options: Any,
) -> pl.LightningModule:
    """``RetrievalModule`` over a fresh ``RetrievalNet``; the architecture joins its hparams so
    ``compressed.pt`` rebuilds it. Start from a trained base with ``nncf-ext compress --init-from``."""
    from lightning_modules.retrieval.model import build_retrieval_net
    from lightning_modules.retrieval.module import RetrievalModule

    kwargs: dict[str, Any] = {"widths": tuple(widths)} if arch == "small" else {}
    net = build_retrieval_net(arch, num_clusters=num_clusters, whitening_dim=whitening_dim, **kwargs)
    module = RetrievalModule(net, **module_options)
    module.hparams.update(
        arch=arch,
        widths=list(widths),
        num_clusters=num_clusters,
        whitening_dim=whitening_dim,
        image_size=image_size,
    )
    # the spread of ImageNet-normalised images, not zeros: activation ranges may start from it
    module.example_input_array = torch.randn(
        1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)
    )
    return module


def _retrieval_data(
    data: str | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    hparams: Mapping[str, Any] | None = None,
) -> pl.LightningDataModule:
    """``--data TRAIN,TEST`` (revisited-format directories); default: embedded synth_paris -> synth_oxford.
    Images are resized to the module's ``image_size`` (``hparams``; 64 by default)."""
    from lightning_modules.retrieval.datamodule import RetrievalDataModule

    image_size = int((hparams or {}).get("image_size", 64))
    options: dict[str, Any] = {
        "batch_size": batch_size or 16,
        "seed": seed,
        "num_negatives": 3,
        "image_size": image_size,
    }
    if data is None:
        return RetrievalDataModule.embedded(**options)
    parts = data.split(",")
    if len(parts) != 2:
        raise ConfigError("data", f"the retrieval task takes --data TRAIN_DIR,TEST_DIR, got '{data}'")
    return RetrievalDataModule(parts[0], parts[1], **options)


def _retrieval_example(datamodule: pl.LightningDataModule) -> torch.Tensor:
    images, _ = next(iter(datamodule.init_dataloader()))  # type: ignore[attr-defined]  # (images, indices)
    return images[:32]


TASKS: dict[str, Task] = {
    "toy": Task(
        "toy", _toy_module, _toy_data, _toy_example, "gratings classification (tiny, generated in memory)"
    ),
    "retrieval": Task(
        "retrieval",
        _retrieval_module,
        _retrieval_data,
        _retrieval_example,
        "place recognition: conv features + NetVLAD + PCA whitening, triplet loss, revisited mAP",
    ),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError("task", f"unknown task '{name}'; known: {sorted(TASKS)}")
    return TASKS[name]


def network(module: pl.LightningModule) -> nn.Module:
    """The network a task trains and compresses (``module.model``)."""
    model = getattr(module, "model", None)
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"{type(module).__name__} has no 'model' network")
    return model


def save_compressed(
    path: str | Path, task: str, module: pl.LightningModule, config: nncf_ext.CompressionConfig
) -> Path:
    """Write the compressed network atomically (temporary file, then rename)."""
    model = network(module)
    payload = {
        "format": FORMAT,
        "task": task,
        "hparams": dict(module.hparams),
        "compression_config": config.to_dict(),
        "nncf_config": nncf_ext.get_config(model),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    path = Path(path)
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_compressed(path: str | Path) -> tuple[str, pl.LightningModule, dict[str, Any]]:
    """Rebuild the task module with its compression hooks and weights; returns (task, module, payload)."""
    head = b""
    try:
        with open(path, "rb") as f:
            head = f.read(len(ARCHIVE_MAGIC))
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no such file: {path}") from None
    except Exception as e:  # pickle refusing an unsafe object, a truncated file, a directory, ...
        if head == ARCHIVE_MAGIC:
            raise CheckpointError(
                f"{path} is a Deep Compression archive (save_archive): it holds weights only; read it with "
                "nncf_ext.load_archive, and give `nncf-ext` the compressed.pt written beside it"
            ) from None
        # torch's text for an unsafe file advises loading it with weights_only=False: not repeated
        damaged = ("Unsupported operand", "String is too long", "truncated", "invalid load key")
        if isinstance(e, EOFError) or (
            isinstance(e, pickle.UnpicklingError) and any(d in str(e) for d in damaged)
        ):
            reason = "not a torch file, or a damaged one"
        elif isinstance(e, pickle.UnpicklingError):  # any other refusal of the weights-only loader
            reason = "it holds objects other than tensors (refused unread)"
        else:
            reason = f"{type(e).__name__}: {e or 'empty or truncated'}"
        raise CheckpointError(
            f"cannot load {path} as a compressed model written by `nncf-ext compress`: {reason}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an nncf-ext compressed model (written by `nncf-ext compress`)")
    task = get_task(payload["task"])
    try:
        module = task.module(**payload["hparams"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"{path}: the stored settings do not build a '{task.name}' model: {e}"
        ) from None
    model = network(module)
    try:
        nncf_ext.load_from_config(model, payload["nncf_config"])
        model.load_state_dict(payload["state_dict"])
    except (CheckpointError, RuntimeError) as e:  # hooks, keys or shapes that the settings do not build
        raise CheckpointError(f"{path}: the weights do not fit the model of its settings: {e}") from None
    module.eval()
    return task.name, module, payload
