"""MQAT against uniform LSQ QAT and HAWQ-V3 at equal size (4x and 8x weight compression), side by side.

    python -m benchmarks.mqat_pose --task pose --base outputs/pose_base.pt   # PoseNet: backbone / fpn / head
    python -m benchmarks.mqat_pose --task retrieval                         # backbone / netvlad / whitening

Every method starts from the same FP32 base and gets the same fine-tuning steps with 8-bit activations, on
the same data order and augmentations for a given seed (``--seeds 0 1 2`` runs them all and reports the
mean, each seed in brackets):

* uniform LSQ: every weight at 32 / target bits (8 at 4x, 4 at 8x), learnable step sizes (LSQ gradient scale);
* HAWQ-V3: bits per module by the ILP from Hutchinson Hessian traces x quantization perturbation, all
  modules quantized at once;
* MQAT: bits per module by the ILP from the measured task-metric drop of quantizing each module alone
  (``--sensitivity loss``: the rise of the mean task loss of 8 fixed training batches instead), modules
  quantized one per stage (least sensitive first), each stage fine-tuned; the stages before the last take
  1 / (2 x modules) of the steps each (``steps_per_stage``), so the fully quantized network trains for the
  rest (2/3 with three modules).

``--modules spec.json`` replaces the task's modules (backbone / fpn / head, or backbone / netvlad / whitening)
with any module spec of the ``mqat`` config, for example the pose backbone split by stage::

    {"early": {"names": ["backbone.stem", "backbone.stage1", "backbone.stage2"]},
     "stage3": {"names": ["backbone.stage3"]}, "stage4": {"names": ["backbone.stage4"]},
     "fpn": {"names": ["fpn"]}, "head": {"names": ["head"]}}

The pose base comes from ``examples/pose.py --checkpoint outputs/pose_base.pt``; the retrieval base is the
demo's recipe, trained here (about a minute). Writes ``outputs/benchmarks/mqat_<task>.json`` (with
``_<spec file name>``, ``_loss``, ``_bops``, ``_at_once`` and ``_8x`` appended for ``--modules``,
``--sensitivity loss``, ``--equal-bops``, ``--at-once`` and ``--targets 8``).

Equal size need not be equal compute: the table's BOPs ratio (FP32 BOPs over the run's, MACs x weight bits
x activation bits, each module's MACs from the NNCF graph) shows what each allocation costs in bit
operations, and ``--equal-bops`` gives HAWQ-V3 and MQAT the uniform baseline's BOPs as a second budget.
``--at-once`` adds "MQAT bits, at once": MQAT's allocation with every module quantized from the start, which
tells what its bits do from what its gradated order does.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

import nncf_ext
from benchmarks.common import report
from benchmarks.pose_base import held_out_loader
from lightning_modules.callbacks import NNCFCompressionCallback
from nncf_ext.model import frozen_state, model_weights
from nncf_ext.mqat import ModuleSpec, hessian_sensitivity, measure_sensitivity, resolve_modules
from nncf_ext.mqat.algo import module_bits
from nncf_ext.mqat.budgets import module_macs
from nncf_ext.scopes import Scope

CANDIDATE_BITS = [2, 3, 4, 5, 6, 8]
TARGETS = (4, 8)
ACTIVATION_BITS = 8
MQAT_AT_ONCE = "MQAT bits, at once"
LOSS_BATCH_SEED = 20_240  # the fixed batches of loss_fn: the same whatever ran before (HAWQ-V3, loss tables)


@contextmanager
def fixed_rng(seed: int) -> Iterator[None]:
    """Seeded torch and numpy global generators inside, the callers' states restored after."""
    numpy_state = np.random.get_state()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(numpy_state)


class TaskAdapter(Protocol):
    """What the comparison needs of a task: the base network, fine-tuning, scoring, a loss batch."""

    name: ClassVar[str]
    modules: ClassVar[dict[str, dict[str, list[str]]]]
    metric: ClassVar[str]  # the main metric key (higher is better)
    columns: ClassVar[tuple[str, ...]]  # metric keys printed in the table
    lr_scale: float  # fine-tuning peak LR / the base's
    steps_per_epoch: int  # optimizer steps in one fine-tuning epoch
    example: torch.Tensor  # for NNCF's graph
    calibration: torch.Tensor  # a batch of real inputs: activation quantizers take their ranges from it

    def base(self) -> nn.Module: ...

    def fit(self, model: nn.Module, epochs: int, callbacks: list[pl.Callback], seed: int) -> None: ...

    def evaluate(self, model: nn.Module) -> dict[str, float]: ...

    def sensitivity_metric(self, model: nn.Module) -> float:
        """The task metric on a validation subset (not the test set)."""
        ...

    def loss_fn(self, model: nn.Module, batches: int = 1) -> Callable[[], torch.Tensor]:
        """The mean task loss of the first ``batches`` training batches (fixed once made)."""
        ...


class RetrievalAdapter:
    name = "retrieval"
    modules: ClassVar[dict[str, dict[str, list[str]]]] = {
        "backbone": {"names": ["backbone"]},
        "netvlad": {"names": ["netvlad"]},
        "whitening": {"names": ["whitening"]},
    }
    metric = "mAP_medium"
    columns = ("mAP_easy", "mAP_medium", "mAP_hard")

    def __init__(self, lr_scale: float = 0.2) -> None:
        from dataclasses import replace

        from lightning_modules.data.places_synth import ensure_places_synth
        from lightning_modules.data.revisited import load_revisited
        from lightning_modules.retrieval.datamodule import RetrievalDataModule
        from lightning_modules.retrieval.recipe import BaseRecipe

        self.lr_scale = lr_scale
        self.recipe = BaseRecipe()
        self.tune = replace(self.recipe, lr=self.recipe.lr * lr_scale)
        paths = ensure_places_synth()
        r = self.recipe
        self.dm = RetrievalDataModule(
            paths["synth_train"], paths["synth_oxford"], image_size=r.image_size, batch_size=r.batch_size,
            num_negatives=r.num_negatives, seed=r.seed,
        )  # fmt: skip
        self.validation = load_revisited(paths["synth_paris"])
        self.example = torch.zeros(1, 3, r.image_size, r.image_size)
        self.calibration = next(iter(self.dm.init_dataloader()))[0][:64]
        self.steps_per_epoch = r.tuples_per_epoch // r.batch_size

    def base(self) -> nn.Module:
        from lightning_modules.retrieval.recipe import build_base, train

        model = build_base(self.recipe, self.dm)
        train(model, self.dm, self.recipe, limit_val_batches=0)
        return model

    def fit(self, model: nn.Module, epochs: int, callbacks: list[pl.Callback], seed: int) -> None:
        from dataclasses import replace

        from lightning_modules.retrieval.recipe import train

        train(model, self.dm, replace(self.tune, seed=seed), epochs, callbacks=callbacks, limit_val_batches=0)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        from lightning_modules.retrieval.evaluation import evaluate

        return evaluate(model, self.dm.val_data, self.recipe.image_size)

    def sensitivity_metric(self, model: nn.Module) -> float:
        from lightning_modules.retrieval.evaluation import evaluate

        return evaluate(model, self.validation, self.recipe.image_size, protocols=("medium",))["mAP_medium"]

    def loss_fn(self, model: nn.Module, batches: int = 1) -> Callable[[], torch.Tensor]:
        from lightning_modules.retrieval.losses import TripletLoss

        with fixed_rng(LOSS_BATCH_SEED):  # the loader shuffles with the global generator
            fixed = [images for images, _ in itertools.islice(self.dm.train_dataloader(), batches)]
        loss = TripletLoss(0.1)

        def fn() -> torch.Tensor:
            total = torch.zeros(())
            for images in fixed:
                b, t = images.shape[:2]
                total = total + loss(model(images.flatten(0, 1)).view(b, t, -1))
            return total / len(fixed)

        return fn


class PoseAdapter:
    name = "pose"
    modules: ClassVar[dict[str, dict[str, list[str]]]] = {
        "backbone": {"names": ["backbone"]}, "fpn": {"names": ["fpn"]}, "head": {"names": ["head"]}
    }  # fmt: skip
    metric = "add_0.1d"
    columns = ("add_0.1d", "add_0.1d_near", "add_0.1d_medium", "add_0.1d_far", "held_out_add_0.1d")

    def __init__(self, checkpoint: Path, train_limit: int | None, lr_scale: float = 0.01) -> None:
        from lightning_modules.data.bop import BopEvalDataset
        from lightning_modules.data.pose_synth import SynthConfig, pose_synth
        from lightning_modules.pose.run import TrainConfig, data_loaders

        payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
        self.lr_scale = lr_scale
        self.hparams, self.state = payload["hparams"], payload["state_dict"]
        self.root = pose_synth(SynthConfig())
        self.cfg = TrainConfig(train_limit=train_limit, keypoints=payload.get("keypoints", "bbox"))
        self.train_loader, self.test_loader, train = data_loaders(self.root, self.cfg)
        self.held_out_loader, _ = held_out_loader(self.cfg.keypoints, self.cfg.batch_size)
        if not np.allclose(train.keypoints_3d(), np.asarray(self.hparams["keypoints_3d"])):
            raise SystemExit(f"{checkpoint}: keypoints differ from the data set's {self.cfg.keypoints!r}")
        validation = BopEvalDataset(self.root, "train", keypoints=self.cfg.keypoints)
        subset = torch.utils.data.Subset(validation, range(len(validation) - 300, len(validation)))
        self.val_loader = torch.utils.data.DataLoader(
            subset, batch_size=32, collate_fn=BopEvalDataset.collate
        )
        self.example = torch.zeros(1, 3, 128, 128)
        self.calibration = next(iter(self.train_loader))["image"]
        self.steps_per_epoch = len(self.train_loader)

    def _module(self, model: nn.Module) -> Any:
        from lightning_modules.pose.module import PoseModule

        module = PoseModule(**{**self.hparams, "lr": self.hparams.get("lr", 3e-3) * self.lr_scale})
        module.model = model
        return module

    def base(self) -> nn.Module:
        from lightning_modules.pose.module import PoseModule

        module = PoseModule(**self.hparams)
        module.model.load_state_dict(self.state)
        return module.model

    def fit(self, model: nn.Module, epochs: int, callbacks: list[pl.Callback], seed: int) -> None:
        from dataclasses import replace

        from lightning_modules.pose.run import data_loaders

        trainer = pl.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                             callbacks=callbacks)  # fmt: skip
        # a fresh loader per run: every method sees the same image order and augmentations for a seed
        pl.seed_everything(seed, verbose=False)
        trainer.fit(self._module(model), data_loaders(self.root, replace(self.cfg, seed=seed))[0])

    def _score(self, model: nn.Module, loader: Any) -> dict[str, float]:
        from lightning_modules.pose.run import evaluate

        return evaluate(self._module(model), loader)[0]

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Test-set metrics, and ADD(-S)-0.1d on 600 held-out images of the same generator."""
        held_out = self._score(model, self.held_out_loader)["add_0.1d"]
        return {**self._score(model, self.test_loader), "held_out_add_0.1d": held_out}

    def sensitivity_metric(self, model: nn.Module) -> float:
        return self._score(model, self.val_loader)["add_0.1d"]

    def loss_fn(self, model: nn.Module, batches: int = 1) -> Callable[[], torch.Tensor]:
        loader = torch.utils.data.DataLoader(  # not self.train_loader, whose generator moves on each epoch
            self.train_loader.dataset,
            batch_size=self.train_loader.batch_size,
            shuffle=True,
            collate_fn=self.train_loader.collate_fn,
            generator=torch.Generator().manual_seed(LOSS_BATCH_SEED),
        )
        with fixed_rng(LOSS_BATCH_SEED):
            fixed = list(itertools.islice(loader, batches))
        module = self._module(model)
        return lambda: sum((module.compute_loss(b)["loss"] for b in fixed), torch.zeros(())) / len(fixed)


def loss_sensitivity(task: TaskAdapter, model: nn.Module, batches: int = 8) -> Callable[[], float]:
    """The mean task loss of ``batches`` fixed training batches, in eval mode: MQAT's cheap proxy."""
    loss = task.loss_fn(model, batches)

    def evaluate() -> float:
        with frozen_state(model):
            return float(loss())

    return evaluate


def weight_size(model: nn.Module) -> tuple[int, int]:
    """(FP32 bytes, quantized bytes) of the weights that carry quantizers."""
    stats = nncf_ext.compression_statistic(model)
    fp32 = sum(layer.params * 4 for layer in stats.layers)
    quantized = sum(layer.params * layer.bits for layer in stats.layers) // 8
    return fp32, quantized


def bops_ratio(macs: dict[str, int], bits: dict[str, int]) -> float:
    """FP32 BOPs (32 x 32 bits per MAC) over those of ``bits`` per module (``{"all": b}``: uniform), the
    activations at ``ACTIVATION_BITS``: what the same size buys in compute."""
    quantized = sum(n * bits.get(m, bits.get("all", 32)) * ACTIVATION_BITS for m, n in macs.items())
    return 32 * 32 * sum(macs.values()) / quantized


def method_configs(
    task: TaskAdapter,
    modules: dict[str, Any],
    work: Path,
    target: int,
    epochs: int,
    sensitivity: str = "metric",
    equal_bops: bool = False,
) -> dict[str, dict[str, Any]]:
    """The three methods' compression entries at ``target``x over the quantized weights; MQAT's costs are
    the ``sensitivity`` table (``metric`` or ``loss``). ``equal_bops``: HAWQ-V3 and MQAT also get the
    uniform baseline's BOPs as a budget (16x fewer than FP32 at 4x, 32x at 8x)."""
    activations = {"bits": ACTIVATION_BITS}
    # the budget is over the quantized weights, as the uniform baseline's 32 / bits and the ratio column
    allocation: dict[str, Any] = {
        "target_compression": target,
        "candidate_bits": CANDIDATE_BITS,
        "size": "weights",
    }
    if equal_bops:
        allocation["bops_compression"] = 32 * 32 / ((32 // target) * ACTIVATION_BITS)
    steps_per_stage = max(task.steps_per_epoch * epochs // (2 * len(modules)), 1)
    return {
        "uniform LSQ": {"algorithm": "uniform_quantization", "weights": {"bits": 32 // target},
                        "activations": activations, "lsq_gradient_scale": True},
        "HAWQ-V3": {"algorithm": "mqat", "modules": modules, "order": "simultaneous",
                    "allocation": {**allocation, "sensitivity": str(work / "sensitivity_hessian.json")},
                    "activations": activations},
        "MQAT": {"algorithm": "mqat", "modules": modules, "order": "sensitivity",
                 "allocation": {**allocation, "sensitivity": str(work / f"sensitivity_{sensitivity}.json")},
                 "activations": activations, "steps_per_stage": steps_per_stage},
    }  # fmt: skip


def summarize(runs: list[dict[str, Any]], task: TaskAdapter) -> list[dict[str, Any]]:
    """One row per (method, target): metrics averaged over the seeds, the main metric of each seed."""
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for run in runs:
        row = rows.setdefault((run["method"], run["target"]), {**run, "runs": []})
        row["runs"].append(run)
    for row in rows.values():
        row["metrics"] = {c: float(np.mean([r["metrics"][c] for r in row["runs"]])) for c in row["metrics"]}
        row["per_seed"] = {r["seed"]: r["metrics"][task.metric] for r in row["runs"]}
        del row["runs"], row["seed"]
    return list(rows.values())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", choices=("pose", "retrieval"), default="pose")
    parser.add_argument(
        "--base", type=Path, default=Path("outputs/pose_base.pt"), help="pose base checkpoint"
    )
    parser.add_argument("--epochs", type=int, default=6, help="fine-tuning epochs of every method")
    parser.add_argument("--train-limit", type=int, default=None, help="pose: training images per epoch")
    parser.add_argument(
        "--lr-scale", type=float, default=None,
        help="fine-tuning peak LR as a fraction of the base's (default: pose 0.01, retrieval 0.2)",
    )  # fmt: skip
    parser.add_argument(
        "--modules", type=Path, default=None,
        help="a JSON module spec (as the mqat config's 'modules') instead of the task's three modules",
    )  # fmt: skip
    parser.add_argument(
        "--sensitivity", choices=("metric", "loss"), default="metric",
        help="MQAT's costs: the task metric on a validation subset, or the loss of 8 fixed training batches",
    )  # fmt: skip
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0],
        help="seeds of the fine-tuning runs (data order, augmentation); the table shows their mean",
    )  # fmt: skip
    parser.add_argument(
        "--targets", type=int, nargs="+", choices=TARGETS, default=list(TARGETS),
        help="compression targets to run (results of a subset go to a file of their own)",
    )  # fmt: skip
    parser.add_argument(
        "--at-once", action="store_true",
        help=f"add '{MQAT_AT_ONCE}': MQAT's bits, every module quantized at once (ablates its order)",
    )  # fmt: skip
    parser.add_argument(
        "--equal-bops", action="store_true",
        help="HAWQ-V3 and MQAT also within the uniform baseline's BOPs (equal size and compute)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.lr_scale is not None and args.lr_scale <= 0:
        parser.error(f"--lr-scale must be > 0, got {args.lr_scale}")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds repeat: {args.seeds}")
    spec: dict[str, Any] | None = None
    if args.modules is not None:
        try:
            spec = json.loads(args.modules.read_text())
        except (OSError, json.JSONDecodeError) as e:
            parser.error(f"--modules {args.modules}: {e}")
        if not isinstance(spec, dict):
            parser.error(f"--modules {args.modules}: a JSON object of modules is needed")
    pl.seed_everything(args.seeds[0], verbose=False)
    task: TaskAdapter
    if args.task == "retrieval":
        task = RetrievalAdapter(0.2 if args.lr_scale is None else args.lr_scale)
    else:
        lr_scale = 0.01 if args.lr_scale is None else args.lr_scale
        task = PoseAdapter(args.base, args.train_limit, lr_scale)
    modules_spec = task.modules if spec is None else spec
    suffix = "" if spec is None else f"_{args.modules.stem}"
    suffix += "_loss" if args.sensitivity == "loss" else ""
    suffix += "_bops" if args.equal_bops else ""
    suffix += "_at_once" if args.at_once else ""
    targets = sorted(set(args.targets))
    suffix += "" if targets == list(TARGETS) else "".join(f"_{t}x" for t in targets)
    work = Path("outputs") / "benchmarks" / f"mqat_{task.name}{suffix}"
    work.mkdir(parents=True, exist_ok=True)
    for stale in work.glob("sensitivity_*.json"):  # tables of an earlier base must not be reused
        stale.unlink()

    start = time.perf_counter()
    base = task.base()
    fp32 = task.evaluate(base)
    runs = [{"method": "FP32", "target": 1, "bits": {}, "ratio": 1.0, "bops_ratio": 1.0, "metrics": fp32,
             "seed": s} for s in args.seeds]  # fmt: skip

    weights = model_weights(base, task.example)
    modules = resolve_modules(ModuleSpec.from_config(modules_spec, "modules"), weights, Scope(), "modules")
    macs = module_macs(modules, "modules")
    timings: dict[str, float] = {}
    t = time.perf_counter()
    if args.sensitivity == "metric":
        measure_sensitivity(base, modules, CANDIDATE_BITS, lambda: task.sensitivity_metric(base),
                            cache=work / "sensitivity_metric.json")  # fmt: skip
        timings["metric_sensitivity_s"] = time.perf_counter() - t
    else:
        t = time.perf_counter()
        measure_sensitivity(base, modules, CANDIDATE_BITS, loss_sensitivity(task, base), method="loss",
                            higher_is_better=False, cache=work / "sensitivity_loss.json")  # fmt: skip
        timings["loss_sensitivity_s"] = time.perf_counter() - t
    t = time.perf_counter()
    hessian_sensitivity(base, modules, CANDIDATE_BITS, task.loss_fn(base), samples=32,
                        cache=work / "sensitivity_hessian.json")  # fmt: skip
    timings["hessian_sensitivity_s"] = time.perf_counter() - t
    for seed in args.seeds:
        for target in targets:
            configs = method_configs(
                task, modules_spec, work, target, args.epochs, args.sensitivity, args.equal_bops
            )
            if args.at_once:  # MQAT's allocation without its gradated flow: what the order alone changes
                mqat = {k: v for k, v in configs["MQAT"].items() if k != "steps_per_stage"}
                configs[MQAT_AT_ONCE] = {**mqat, "order": "simultaneous"}
            for method, entry in configs.items():
                model = copy.deepcopy(base).train()
                callback = NNCFCompressionCallback({"compression": [entry]}, example_input=task.calibration,
                                                   print_statistics=False)  # fmt: skip
                t = time.perf_counter()
                task.fit(model, args.epochs, [callback], seed)
                seconds = time.perf_counter() - t
                assert callback.pipeline is not None
                algorithm = callback.pipeline.algorithms[0]
                bits = module_bits(algorithm) if entry["algorithm"] == "mqat" else {"all": 32 // target}
                full, quantized = weight_size(model)
                metrics = task.evaluate(model)
                runs.append({"method": method, "target": target, "bits": bits, "ratio": full / quantized,
                             "bops_ratio": bops_ratio(macs, bits), "metrics": metrics, "seconds": seconds,
                             "seed": seed})  # fmt: skip
                print(f"seed {seed}, {method} at {target}x: bits {bits}, {task.metric} "
                      f"{metrics[task.metric]:.4f}", flush=True)  # fmt: skip
    rows = summarize(runs, task)
    results: dict[str, Any] = {
        "task": task.name, "epochs": args.epochs, "lr_scale": task.lr_scale, "seeds": args.seeds,
        "modules": modules_spec, "module_macs": macs, "sensitivity": args.sensitivity,
        "equal_bops": args.equal_bops, "at_once": args.at_once,
        "methods": rows, "runs": runs, "timings": {**timings, "total_s": time.perf_counter() - start},
    }  # fmt: skip

    def main_cell(row: dict[str, Any]) -> str:
        mean = f"{100 * row['metrics'][task.metric]:.1f}"
        if len(args.seeds) == 1 or row["method"] == "FP32":
            return mean
        return f"{mean} ({' / '.join(f'{100 * v:.1f}' for v in row['per_seed'].values())})"

    others = [c for c in task.columns if c != task.metric]
    table = [[m["method"], f"{m['target']}x", " ".join(f"{k}:{v}" for k, v in m["bits"].items()) or "32",
              f"{m['ratio']:.2f}x", f"{m['bops_ratio']:.1f}x", main_cell(m),
              *(f"{100 * m['metrics'][c]:.1f}" for c in others)]
             for m in rows]  # fmt: skip
    header = ["method", "target", "bits", "ratio", "BOPs ratio", task.metric, *others]
    report(work.name, header, table, results)


if __name__ == "__main__":
    main()
