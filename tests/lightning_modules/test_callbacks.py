import csv
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

import nncf_ext
from lightning_modules.callbacks import NNCFCompressionCallback
from lightning_modules.toy.module import ToyModule
from nncf_ext.algorithms.kmeans_quantization import KMeansQuantizer
from nncf_ext.algorithms.threshold_pruning import ThresholdPruningMask
from nncf_ext.errors import CheckpointError, ModelError
from nncf_ext.hooks import hooks_of_type
from tests.lightning_modules.helpers import SeededToyData, snapshot, trainer

PRUNE = {
    "algorithm": "threshold_pruning",
    "threshold": {"type": "multistep", "steps": {"0": 0.01, "1": 0.03}},
}
L1 = {"algorithm": "l1_sparsity", "lambda": {"type": "multistep", "steps": {"0": 1e-4, "2": 0.0}}}
KMEANS = {"algorithm": "kmeans_quantization", "bits": 4, "start_epoch": 1}
UNIFORM = {
    "algorithm": "uniform_quantization",
    "weights": {"bits": 4},
    "activations": {"bits": 8},
    "start_epoch": 1,
}


def logged(tmp: Path) -> list[dict[str, str]]:
    (path,) = tmp.glob("logs/version_*/metrics.csv")
    with path.open() as f:
        return [row for row in csv.DictReader(f) if row.get("compression/sparsity")]


@pytest.mark.parametrize(
    ("entries", "metric", "values"),
    [
        ([PRUNE], "compression/threshold_pruning/threshold", ["0.01", "0.03"]),
        ([L1], "compression/l1_sparsity/lambda", ["0.0001", "0.0001"]),
        ([KMEANS], "compression/kmeans_quantization/mean_bits", ["0.0", "4.0"]),
        ([UNIFORM], "compression/uniform_quantization/mean_weight_bits", ["0.0", "4.0"]),
    ],
    ids=["pruning", "l1", "kmeans", "uniform"],
)
def test_each_algorithm_runs_in_fit(tmp_path: Path, entries: list, metric: str, values: list[str]) -> None:
    pl.seed_everything(0)
    module = ToyModule()
    before = snapshot(module.model)
    callback = NNCFCompressionCallback({"compression": entries})
    trainer(tmp_path, 2, [callback]).fit(module, SeededToyData())
    rows = logged(tmp_path)
    assert [r[metric] for r in rows] == values  # the schedule advanced and was logged each epoch
    stats = nncf_ext.compression_statistic(module.model)
    if entries[0] is PRUNE:
        assert 0.2 < stats.sparsity < 0.95
        assert all(
            int((~h.mask).sum()) > 0 for h in hooks_of_type(module.model, ThresholdPruningMask).values()
        )
    elif entries[0] is L1:
        pl.seed_everything(0)
        plain = ToyModule()
        trainer(tmp_path / "plain", 2, []).fit(plain, SeededToyData())
        weights = [n for n in before if n.endswith("weight")]
        l1_norm = sum(float(module.model.state_dict()[n].abs().sum()) for n in weights)
        plain_norm = sum(float(plain.model.state_dict()[n].abs().sum()) for n in weights)
        assert l1_norm < 0.97 * plain_norm  # injected L1 gradients shrank the weights
    else:
        assert stats.layers
        assert all(layer.bits == 4 for layer in stats.layers)


@pytest.mark.parametrize("precision", ["32-true", "16-mixed"])
def test_injection_matches_loss_term(tmp_path: Path, precision: str) -> None:
    """The callback's gradient injection equals adding pipeline.loss() in the module, under gradient
    accumulation (a partly filled last window included) and under fp16 mixed precision, whose GradScaler
    scales the loss gradients (injected after backward, the L1 term was divided by its scale, 65536)."""
    from pytorch_lightning.plugins.precision import MixedPrecision

    class LossInModule(ToyModule):
        callback: NNCFCompressionCallback

        def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            loss = super().training_step(batch, batch_idx)
            assert self.callback.pipeline is not None
            return loss + self.callback.pipeline.loss()

    config = {"compression": [{"algorithm": "l1_sparsity", "lambda": 1e-3}]}
    results = []
    for in_module in (False, True):
        pl.seed_everything(0)
        module = LossInModule() if in_module else ToyModule()
        callback = NNCFCompressionCallback(config, loss_in_module=in_module)
        module.callback = callback
        # what Trainer(accelerator="gpu", precision="16-mixed") builds on CUDA, here on the CPU
        amp = {"plugins": [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))]}
        kwargs = amp if precision == "16-mixed" else {}
        # 7 batches: the last accumulation window holds one micro-batch, whose loss Lightning divides by 2
        trainer(tmp_path / str(in_module), 1, [callback], accumulate_grad_batches=2, **kwargs).fit(
            module, SeededToyData(size=224)
        )
        results.append(snapshot(module.model))
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], atol=1e-6, rtol=1e-5)


def test_pipeline_steps_once_per_optimizer_step_under_accumulation(tmp_path: Path) -> None:
    config = {"compression": [{**KMEANS, "start_epoch": 0, "assignment": "reassign", "reassign_interval": 2}]}
    pl.seed_everything(0)
    callback = NNCFCompressionCallback(config, print_statistics=False)
    t = trainer(tmp_path, 1, [callback], accumulate_grad_batches=4)
    t.fit(ToyModule(), SeededToyData(size=256, batch_size=32))  # 8 batches, 2 optimizer steps
    assert callback.pipeline is not None
    assert t.global_step == 2
    assert callback.pipeline.state_dict()["algorithms"][0]["steps"] == 2


def test_a_resumed_run_under_accumulation_steps_as_the_uninterrupted_one(tmp_path: Path) -> None:
    """The first micro-batch after a resume is no optimizer step: the pipeline must not step there."""
    config = {"compression": [{**KMEANS, "start_epoch": 0, "assignment": "reassign", "reassign_interval": 2}]}

    def run(root: Path, epochs: int, ckpt: str | None = None) -> NNCFCompressionCallback:
        pl.seed_everything(0)
        callback = NNCFCompressionCallback(config, print_statistics=False)
        checkpoint = pl.callbacks.ModelCheckpoint(dirpath=root, save_last=True, every_n_epochs=1)
        t = trainer(root, epochs, [callback, checkpoint], accumulate_grad_batches=4)
        t.fit(ToyModule(), SeededToyData(size=256, batch_size=32), ckpt_path=ckpt)  # 2 steps an epoch
        return callback

    full = run(tmp_path / "full", 2)
    run(tmp_path / "part", 1)
    resumed = run(tmp_path / "part", 2, ckpt=str(tmp_path / "part" / "last.ckpt"))
    assert full.pipeline is not None and resumed.pipeline is not None
    assert resumed.pipeline.state_dict()["algorithms"][0]["steps"] == 4
    assert full.pipeline.state_dict()["algorithms"][0]["steps"] == 4


def test_a_callback_refuses_a_second_model(tmp_path: Path) -> None:
    callback = NNCFCompressionCallback({"compression": [L1]}, print_statistics=False)
    module = ToyModule()
    trainer(tmp_path / "a", 1, [callback]).fit(module, SeededToyData())
    trainer(tmp_path / "b", 2, [callback]).fit(module, SeededToyData())  # the same model: continues
    with pytest.raises(ModelError, match="another model"):
        trainer(tmp_path / "c", 1, [callback]).fit(ToyModule(), SeededToyData())


def test_kill_and_resume_is_bitwise_identical(tmp_path: Path) -> None:
    later_prune = {**PRUNE, "threshold": {"type": "multistep", "steps": {"0": 0.01, "2": 0.03}}}
    config = {"compression": [L1, later_prune, {**KMEANS, "start_epoch": 3}]}

    def run(root: Path, epochs: int, ckpt: str | None = None) -> ToyModule:
        pl.seed_everything(0)
        module = ToyModule()
        checkpoint = pl.callbacks.ModelCheckpoint(dirpath=root, save_last=True, every_n_epochs=1)
        t = trainer(root, epochs, [NNCFCompressionCallback(config), checkpoint])
        t.fit(module, SeededToyData(), ckpt_path=ckpt)
        return module

    full = snapshot(run(tmp_path / "full", 5).model)
    run(tmp_path / "part", 2)  # "killed" after epoch 2 (k = 2 < start of clustering)
    resumed = run(tmp_path / "part", 5, ckpt=str(tmp_path / "part" / "last.ckpt"))
    part = snapshot(resumed.model)
    assert part.keys() == full.keys()
    for key in full:
        assert torch.equal(full[key], part[key]), key
    assert hooks_of_type(resumed.model, KMeansQuantizer)  # codebooks and indices were compared above


def test_resume_with_another_config_is_refused(tmp_path: Path) -> None:
    pl.seed_everything(0)
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer(tmp_path, 1, [NNCFCompressionCallback({"compression": [PRUNE]}), checkpoint]).fit(
        ToyModule(), SeededToyData()
    )
    other = NNCFCompressionCallback({"compression": [L1]})
    with pytest.raises(CheckpointError, match="different compression config"):
        trainer(tmp_path, 2, [other]).fit(ToyModule(), SeededToyData(), ckpt_path=str(tmp_path / "last.ckpt"))


def test_missing_model_attribute_is_a_clear_error(tmp_path: Path) -> None:
    callback = NNCFCompressionCallback({"compression": [PRUNE]}, model_attr="backbone")
    with pytest.raises(ModelError, match="no module attribute 'backbone'"):
        trainer(tmp_path, 1, [callback]).fit(ToyModule(), SeededToyData())


def test_a_compressed_checkpoint_validates_in_a_fresh_trainer(tmp_path: Path) -> None:
    """trainer.validate(ckpt_path=...) with the callback and an uncompressed module: the checkpoint's hook
    parameters (codebooks, indices, masks) load, and the pipeline takes the checkpoint's state."""
    from lightning_modules.toy.module import ToyDataModule

    config = {"compression": [PRUNE, KMEANS]}  # clustering from epoch 1
    data = ToyDataModule(train_size=128, val_size=128, batch_size=32)
    pl.seed_everything(0)
    module = ToyModule()
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    fitted = trainer(tmp_path / "fit", 2, [NNCFCompressionCallback(config), checkpoint])
    fitted.fit(module, data)
    (expected,) = fitted.validate(module, data, verbose=False)
    callback = NNCFCompressionCallback(config)
    fresh = trainer(tmp_path / "validate", 1, [callback])
    (got,) = fresh.validate(ToyModule(), data, ckpt_path=str(tmp_path / "last.ckpt"), verbose=False)
    assert got == pytest.approx(expected)
    assert callback.pipeline is not None and callback.pipeline.epoch == 1
    assert hooks_of_type(callback.pipeline.model, KMeansQuantizer)


def test_ddp_by_spawn_is_refused(tmp_path: Path) -> None:
    """The pipeline would live in the spawned workers only and the returned model be uncompressed."""
    callback = NNCFCompressionCallback({"compression": [PRUNE]})
    t = trainer(tmp_path, 1, [callback], strategy="ddp_spawn")
    with pytest.raises(ModelError, match="strategy='ddp'"):
        callback.setup(t, ToyModule(), "fit")
