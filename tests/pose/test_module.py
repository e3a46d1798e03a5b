"""PoseModule under a CPU Trainer: the loss falls on tiny data, validation logs ADD, checkpoints reload."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from lightning_modules.data.bop import BopEvalDataset, BopImageEvalDataset, BopTrainDataset
from lightning_modules.data.pose_synth import SynthConfig, pose_synth
from lightning_modules.pose.module import PoseModule
from lightning_modules.pose.run import TrainConfig, data_loaders, evaluate
from nncf_ext.errors import ConfigError

CFG = SynthConfig(
    seed=11, image_size=64, focal=75.0, num_train=8, num_test=4, supersample=2, occlusion_prob=0.0
)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models train faster on one thread, and two OpenMP threads stall on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pose_synth(CFG, tmp_path_factory.mktemp("pose"))


def test_short_fit_lowers_the_loss_and_validates(root: Path, tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    train = BopTrainDataset(root, "train", max_instances=1)
    val = BopEvalDataset(root, "test")
    module = PoseModule(train.keypoints_3d().tolist(), widths=(8, 16, 16, 32, 32), fpn_channels=16, lr=1e-2)
    batch = next(iter(DataLoader(train, batch_size=8)))
    with torch.no_grad():
        before = module.compute_loss(batch)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=15,
        check_val_every_n_epoch=15,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(
        module,
        DataLoader(train, batch_size=4, shuffle=True),
        DataLoader(val, batch_size=4, collate_fn=BopEvalDataset.collate),
    )
    module.train()
    with torch.no_grad():
        after = module.compute_loss(batch)
    assert after["loss"] < 0.5 * before["loss"]
    assert after["kpt_loss"] < before["kpt_loss"]
    logged = trainer.callback_metrics
    assert {"val/add_0.1d", "val/add_0.1d_near", "val/add_0.1d_far", "val/missed"} <= set(logged)
    assert float(logged["val/count"]) == 4.0

    path = tmp_path / "pose.ckpt"
    trainer.save_checkpoint(path)
    restored = PoseModule.load_from_checkpoint(path, weights_only=False)
    assert (
        restored.hparams["lr"] == 1e-2 and restored.hparams["keypoints_3d"] == module.hparams["keypoints_3d"]
    )
    module.eval()
    restored.eval()
    image = batch["image"][:2]
    assert torch.allclose(restored(image)[1], module(image)[1])

    metrics, _ = evaluate(module, DataLoader(val, batch_size=4, collate_fn=BopEvalDataset.collate))
    assert metrics["count"] == 4.0 and 0.0 <= metrics["add_0.5d"] <= 1.0
    # per image (several instances of an object per image): the same four instances are scored
    _, images, _ = data_loaders(root, TrainConfig(workers=0, batch_size=4, several_instances=True))
    assert isinstance(images.dataset, BopImageEvalDataset)
    per_image, _ = evaluate(module, images)
    assert per_image["count"] == 4.0 and 0.0 <= per_image["add_0.5d"] <= 1.0


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"test_limit": 5}, r"test_limit.*\[1, 4\].*got 5"),  # would fail in evaluate, after the training
        ({"train_limit": 0}, r"train_limit.*got 0"),
        ({"train_limit": 2, "batch_size": 4}, "batch_size.*no step would run"),  # drop_last: zero batches
    ],
)
def test_data_limits_are_checked_before_training(root: Path, limits: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        data_loaders(root, TrainConfig(workers=0, **limits))
    train_loader, test_loader, _ = data_loaders(
        root, TrainConfig(workers=0, train_limit=4, test_limit=4, batch_size=4)
    )
    assert len(train_loader) == 1 and len(test_loader.dataset) == 4


def test_rejects_malformed_keypoints() -> None:
    with pytest.raises(ValueError, match=r"\(C, 9, 3\)"):
        PoseModule([[[0.0, 0.0, 0.0]] * 8])


@pytest.mark.parametrize("precision", ["bf16-true", "16-true"])
def test_half_precision_true_is_refused(root: Path, precision: str) -> None:
    """Half precision "*-true" casts every float of the batch: poses, cameras and model points would be
    rounded (a translation of 431.0 mm became 432.0), and the keypoint buffer's .numpy() raised."""
    module = PoseModule(BopTrainDataset(root, "train").keypoints_3d().tolist(), widths=(8, 16, 16, 32, 32))
    loader = DataLoader(BopEvalDataset(root, "test"), batch_size=2, collate_fn=BopEvalDataset.collate)
    trainer = pl.Trainer(accelerator="cpu", precision=precision, logger=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match=f"precision '{precision}'"):
        trainer.validate(module, loader, verbose=False)


def test_loss_under_bf16_autocast_is_fp32_and_close(root: Path) -> None:
    """``TrainConfig.precision`` defaults to bf16-mixed on CPUs with native bf16: the loss stays fp32."""
    torch.manual_seed(0)
    train = BopTrainDataset(root, "train", max_instances=1)
    module = PoseModule(train.keypoints_3d().tolist(), widths=(8, 16, 16, 32, 32), fpn_channels=16)
    batch = next(iter(DataLoader(train, batch_size=8)))
    with torch.no_grad():
        full = module.compute_loss(batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = module.compute_loss(batch)
    for key in ("loss", "cls_loss", "kpt_loss"):
        assert half[key].dtype == torch.float32
        assert torch.isclose(half[key], full[key], rtol=0.05), key
