"""End-to-end demo on the toy task: train a base CNN, prune it through a config file, report statistics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

import nncf_ext
from lightning_modules.toy.data import gratings
from lightning_modules.toy.model import ToyConvNet

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "configs"


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    model.train()
    return acc


def train_epoch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    pipeline: nncf_ext.CompressionPipeline | None = None,
    batch_size: int = 64,
) -> None:
    order = torch.randperm(len(x))
    for i in range(0, len(x), batch_size):
        idx = order[i : i + batch_size]
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        if pipeline is not None:
            loss = loss + pipeline.loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if pipeline is not None:
            pipeline.step()


def run(
    config: str | Path | None = None, epochs: int = 6, output_dir: str | Path | None = None, seed: int = 0
) -> dict[str, Any]:
    """Train, compress with ``config`` (default: the example L1 + threshold recipe), fine-tune, report."""
    config = Path(config) if config is not None else EXAMPLES / "threshold_pruning_l1.json"
    parsed = nncf_ext.load_config(config)  # a bad config fails before any training
    torch.manual_seed(seed)
    x, y = gratings(2048, seed=seed)
    x_test, y_test = gratings(1024, seed=seed + 1)
    model = ToyConvNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        train_epoch(model, x, y, optimizer)
    base_acc = accuracy(model, x_test, y_test)
    print(f"base model: test accuracy {base_acc:.3f}")

    pipeline = nncf_ext.create_compression(model, parsed, x[:1])
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    history = []
    for epoch in range(epochs):
        pipeline.epoch_step(epoch)
        train_epoch(model, x, y, optimizer, pipeline)
        summary = pipeline.summary()
        row = {
            "epoch": epoch,
            **summary,
            "accuracy": accuracy(model, x_test, y_test),
            "sparsity": pipeline.statistics().sparsity,
        }
        history.append(row)
        print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    stats = pipeline.statistics()
    print(stats)
    result = {
        "base_accuracy": base_acc,
        "history": history,
        "statistics": stats.to_dict(),
        "config": str(config),
    }
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "demo_result.json").write_text(json.dumps(result, indent=2))
    return result
