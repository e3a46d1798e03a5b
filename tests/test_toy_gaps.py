"""The toy task's seeds and batch size reach the runs: ``nncf-ext demo --seed``, ``compress --batch-size``,
and a validation set drawn with its own seed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from lightning_modules.toy.data import gratings
from lightning_modules.toy.module import ToyDataModule, ToyModule
from nncf_ext.cli import main

CONFIG = str(Path(__file__).parents[1] / "examples" / "configs" / "deep_compression.json")


def small_demo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """``nncf-ext demo --task toy`` on 1/16 of its data (well under a second): the result, the images it trained on
    and those it tested on."""
    from lightning_modules.toy import demo

    seen: dict[str, torch.Tensor] = {}
    train_epoch, accuracy = demo.train_epoch, demo.accuracy

    def spy_train(model: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        seen.setdefault("train", x)
        train_epoch(model, x, *args, **kwargs)

    def spy_accuracy(model: Any, x: torch.Tensor, y: torch.Tensor) -> float:
        seen.setdefault("test", x)
        return accuracy(model, x, y)

    monkeypatch.setattr(demo, "gratings", lambda n, **kwargs: gratings(n // 16, **kwargs))
    monkeypatch.setattr(demo, "train_epoch", spy_train)
    monkeypatch.setattr(demo, "accuracy", spy_accuracy)
    out = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
    args = ["demo", "--task", "toy", "--epochs", "1", "--seed", str(seed), "--output-dir", str(out)]
    assert main(args) == 0
    return json.loads((out / "demo_result.json").read_text()), seen["train"], seen["test"]


def test_demo_seed_reaches_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, train, test = small_demo(tmp_path, monkeypatch, 3)
    other, other_train, _ = small_demo(tmp_path, monkeypatch, 4)
    again, *_ = small_demo(tmp_path, monkeypatch, 3)  # after another run: the global RNG has moved on
    assert again == first
    assert other["history"] != first["history"]
    assert not torch.equal(other_train, train)  # the training data too, not only the initialisation
    assert not (test[:, None] == train[None]).flatten(2).all(-1).any()  # no test image is a training image


def test_retrieval_demo_gets_the_seed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from lightning_modules.retrieval import demo

    seen: list[Any] = []
    monkeypatch.setattr(demo, "run", lambda settings, *args, **kwargs: seen.append(settings))
    assert main(["demo", "--seed", "7", "--epochs", "2", "--output-dir", str(tmp_path)]) == 0
    assert seen[0].recipe.seed == 7 and seen[0].epochs == 2


class Fitted(Exception):
    """Raised instead of training: the data module the CLI built is all these tests need."""


def compress_datamodule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *extra: str) -> ToyDataModule:
    import pytorch_lightning as pl

    seen: list[Any] = []

    def fit(self: pl.Trainer, module: Any, datamodule: Any = None, **kwargs: Any) -> None:
        seen.append(datamodule)
        raise Fitted

    monkeypatch.setattr(pl.Trainer, "fit", fit)
    args = ["compress", "--task", "toy", "--config", CONFIG, "--output-dir", str(tmp_path / "out")]
    with pytest.raises(Fitted):
        main([*args, *extra])
    (datamodule,) = seen
    assert isinstance(datamodule, ToyDataModule)
    datamodule.setup("fit")
    return datamodule


def test_compress_batch_size_and_seed_reach_the_toy_loaders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    datamodule = compress_datamodule(tmp_path, monkeypatch, "--batch-size", "8", "--seed", "5")
    loader = datamodule.train_dataloader()
    assert loader.batch_size == 8 and len(next(iter(loader))[0]) == 8
    x, y = gratings(datamodule.train_size, seed=5)
    assert torch.equal(datamodule.train.tensors[0], x) and torch.equal(datamodule.train.tensors[1], y)
    assert compress_datamodule(tmp_path, monkeypatch).train_dataloader().batch_size == 64  # the task's


def test_toy_validation_set_has_its_own_seed() -> None:
    """The same validation set for a seed whatever the training size and batch size, never the training
    set (even at equal sizes), and read in a fixed order."""

    def setup(**kwargs: Any) -> ToyDataModule:
        datamodule = ToyDataModule(**kwargs)
        datamodule.setup("fit")
        return datamodule

    same = setup(train_size=32, val_size=32, seed=2)
    assert len(same.val) == 32
    assert not torch.equal(same.val.tensors[0], same.train.tensors[0])
    other = setup(train_size=96, val_size=32, batch_size=8, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(same.val.tensors, other.val.tensors, strict=True))
    batches = list(other.val_dataloader())
    assert torch.equal(torch.cat([x for x, _ in batches]), other.val.tensors[0])


def test_compress_gives_the_callback_real_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Activation ranges start from the callback's example input: the tasks gave zeros, and activation
    quantization through the CLI trained at chance accuracy."""
    import pytorch_lightning as pl

    from lightning_modules.callbacks import NNCFCompressionCallback

    seen: list[Any] = []

    def fit(self: pl.Trainer, module: Any, datamodule: Any = None, **kwargs: Any) -> None:
        seen.extend(c for c in self.callbacks if isinstance(c, NNCFCompressionCallback))  # type: ignore[attr-defined]
        raise Fitted

    monkeypatch.setattr(pl.Trainer, "fit", fit)
    args = ["compress", "--task", "toy", "--config", CONFIG, "--output-dir", str(tmp_path / "out")]
    with pytest.raises(Fitted):
        main([*args, "--seed", "5"])
    (callback,) = seen
    assert torch.equal(callback.example_input, gratings(1024, seed=5)[0][:32])
    assert ToyModule().example_input_array.std() > 0.1  # for the Lightning callback without one
