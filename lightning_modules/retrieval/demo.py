"""The main demo (``make demo`` / ``nncf-ext demo``): the place-recognition compression recipe of Saha et al.
(ACPR 2017) on the embedded data, beside NNCF's own magnitude pruning + int8, every model scored as an IR.

1. A base model (small backbone + NetVLAD + PCA whitening) is trained on ``synth_train``.
2. Each row of the paper's table is one fine-tuning run of the base model under a config file derived from
   ``examples/configs/place_recognition.json`` (L1 + threshold pruning, then k-means trained quantization:
   8, 6, 5 or 4 bits, the whitening layer and NetVLAD's centroids at their own width), applied by
   :class:`NNCFCompressionCallback` inside ``Trainer.fit``.
3. NNCF's baseline gets the same fine-tuning epochs: ``nncf.prune`` (global magnitude, exponential ramp to
   the target ratio), then int8 weights on NNCF's ``SymmetricQuantizer``.
4. Every model is written as a Deep Compression archive (its size gives the compression ratio) and exported
   to OpenVINO; the mAP of the IR on two held-out sets (``synth_oxford``, ``synth_paris``) fills the table.
   A compressed model's floats (BatchNorm, biases, codebooks, scales) are first rounded to float16 values,
   which its archive stores in 2 bytes each; the base and the control stay float32.
   A fine-tuned uncompressed control row shows what the extra epochs alone give.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import nncf
import pytorch_lightning as pl
import torch
from nncf.torch.function_hook.pruning.magnitude.algo import get_pruned_modules
from nncf.torch.function_hook.pruning.magnitude.schedulers import ExponentialMagnitudePruningScheduler
from torch import nn

import nncf_ext
from lightning_modules.callbacks import NNCFCompressionCallback
from lightning_modules.data.places_synth import SynthConfig, ensure_places_synth
from lightning_modules.data.revisited import RevisitedData, load_revisited
from lightning_modules.retrieval.datamodule import RetrievalDataModule
from lightning_modules.retrieval.evaluation import evaluate
from lightning_modules.retrieval.recipe import BaseRecipe, build_base, train
from nncf_ext.errors import ConfigError
from nncf_ext.export import export_openvino, save_archive
from nncf_ext.export.openvino import exact_config
from nncf_ext.export.runtime import OpenVINOModel
from nncf_ext.model import get_weight, unwrap_model

TEMPLATE = Path(__file__).resolve().parents[2] / "examples" / "configs" / "place_recognition.json"
METRIC = "mAP_medium"


@dataclass(frozen=True)
class RecipeRow:
    """One row of the paper's table: pruning quality ``q`` (x std) for convolutions and for the whitening
    layer, then k-means trained quantization: ``bits`` for convolutions, ``fc_bits`` (default ``bits``) for
    the whitening layer and NetVLAD's centroids (Deep Compression's 8-bit conv / 5-bit fc split).
    ``fc_criterion`` replaces the template's pruning criterion of the whitening layer: ``"channel_std"``
    prunes each of its rows against the row's own std (the row name and threshold get a ``c``)."""

    conv_q: float
    fc_q: float
    bits: int
    fc_bits: int | None = None
    fc_criterion: str | None = None

    @property
    def whitening_bits(self) -> int:
        return self.bits if self.fc_bits is None else self.fc_bits

    @property
    def bits_label(self) -> str:
        return f"{self.bits}" if self.whitening_bits == self.bits else f"{self.bits}/{self.whitening_bits}"

    @property
    def per_row(self) -> bool:
        """The whitening layer pruned per row (``channel_std``)."""
        return self.fc_criterion == "channel_std"

    @property
    def threshold_label(self) -> str:
        return f"{self.conv_q:g}/{self.fc_q:g}" + ("c" if self.per_row else "")

    @property
    def name(self) -> str:
        return f"q{self.threshold_label.replace('/', '-')}_{self.bits_label.replace('/', '-')}bit"


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs; the defaults take about 12 minutes on 2 idle CPU cores."""

    recipe: BaseRecipe = field(default_factory=BaseRecipe)
    data: SynthConfig = field(default_factory=SynthConfig)
    epochs: int = 16  # fine-tuning epochs of every compressed model (and of the control)
    rows: tuple[RecipeRow, ...] = (
        RecipeRow(0.0, 1.2, 6, 5),  # convolutions only clustered, as NNCF's 80% point keeps most of them
        RecipeRow(0.5, 1.5, 8),
        RecipeRow(0.25, 2.5, 6, 5),
        RecipeRow(0.75, 2.5, 6, 5),
        RecipeRow(0.5, 4.0, 6, 5),  # keeps 3.7% of the whitening (nncf.prune 90%: 3.3%)
        RecipeRow(0.75, 4.75, 5, 4),
        # the whitening layer pruned per row: its rows are scaled by 1 / sqrt(eigenvalue), and one threshold
        # for the layer prunes its high-variance components first
        RecipeRow(0.75, 5.5, 5, 4, "channel_std"),
        RecipeRow(0.75, 6.5, 5, 4, "channel_std"),
        RecipeRow(0.75, 8.0, 5, 4, "channel_std"),
    )
    nncf_ratios: tuple[float, ...] = (0.8, 0.9, 0.95)  # nncf.prune target ratios (global magnitude)
    control: bool = True  # also fine-tune the uncompressed base for ``epochs``
    # round every compressed model's floats (BatchNorm, biases, codebooks, scales) to float16 values before it
    # is scored, so its archive stores them in 2 bytes and its IR computes with exactly those values
    float16: bool = True
    train_set: str = "synth_train"
    test_sets: tuple[str, str] = ("synth_oxford", "synth_paris")
    progress_bar: bool = True


# -- configs -----------------------------------------------------------------------------------------------
def _pruning_entry(compression: list[dict[str, Any]], op_type: str) -> dict[str, Any]:
    for entry in compression:
        types = entry.get("target_scope", {}).get("types", [])
        if entry.get("algorithm") == "threshold_pruning" and types == [op_type]:
            return entry
    raise ConfigError("compression", f"the template has no threshold_pruning entry for types ['{op_type}']")


def row_config(template: dict[str, Any], row: RecipeRow) -> dict[str, Any]:
    """The template with the row's pruning targets and k-means bits filled in."""
    config = copy.deepcopy(template)
    compression = config.get("compression")
    if not isinstance(compression, list):
        raise ConfigError("compression", "the template needs a 'compression' list")
    for op_type, q in (("conv2d", row.conv_q), ("linear", row.fc_q)):
        threshold = _pruning_entry(compression, op_type)["threshold"]
        if not isinstance(threshold, dict) or "target" not in threshold:
            raise ConfigError(
                "compression.threshold", "the template's thresholds must be ramps with a 'target'"
            )
        threshold["target"] = q
    if row.fc_criterion is not None:
        _pruning_entry(compression, "linear")["criterion"] = row.fc_criterion
    kmeans = {
        tuple(e.get("target_scope", {}).get("types", [])): e
        for e in compression
        if e.get("algorithm") == "kmeans_quantization"
    }
    if sorted(kmeans) != [("conv2d",), ("linear",)]:
        raise ConfigError(
            "compression",
            "the template needs two kmeans_quantization entries: target_scope types ['conv2d'], ['linear']",
        )
    kmeans["conv2d",]["bits"] = row.bits
    kmeans["linear",]["bits"] = row.whitening_bits
    config["description"] = f"{template.get('description', '')} [demo row {row.name}]"
    return config


def row_configs(
    template: dict[str, Any], rows: Sequence[RecipeRow], epochs: int
) -> dict[str, dict[str, Any]]:
    """Every row's config by row name, each validated before anything trains: names must differ, and
    ``epochs`` of fine-tuning must reach every algorithm's start."""
    configs: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row.name in configs:
            raise ConfigError("rows", f"two rows are named {row.name}")
        config = configs[row.name] = row_config(template, row)
        nncf_ext.load_config(config)
        if any(e.get("start_epoch", 0) >= epochs for e in config["compression"] if "start_epoch" in e):
            raise ConfigError("epochs", f"{epochs} fine-tuning epochs end before quantization starts")
    return configs


# -- fine-tuning -------------------------------------------------------------------------------------------
def compress_row(
    base: nn.Module,
    config: dict[str, Any],
    config_path: Path,
    datamodule: RetrievalDataModule,
    tune: BaseRecipe,
    epochs: int,
    **trainer_kwargs: Any,
) -> nn.Module:
    """A copy of ``base`` fine-tuned for ``epochs`` under a row's ``config`` (written to ``config_path``),
    applied by :class:`NNCFCompressionCallback` inside ``Trainer.fit``."""
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(json.dumps(config, indent=2))
    model = copy.deepcopy(base).train()
    callback = NNCFCompressionCallback(config_path, print_statistics=False)
    train(model, datamodule, tune, epochs, callbacks=[callback], **trainer_kwargs)
    return model


def fine_tuning(recipe: BaseRecipe) -> BaseRecipe:
    """The recipe every row (and the control) is fine-tuned with: the base's at a fifth of its rate."""
    return replace(recipe, lr=recipe.lr / 5)


# -- NNCF's baseline ---------------------------------------------------------------------------------------
class MagnitudePruningSchedule(pl.Callback):
    """Steps NNCF's pruning scheduler at the start of every training epoch."""

    def __init__(self, scheduler: ExponentialMagnitudePruningScheduler) -> None:
        self.scheduler = scheduler

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.scheduler.step(trainer.current_epoch)


def nncf_prune_int8(
    base: nn.Module,
    datamodule: RetrievalDataModule,
    recipe: BaseRecipe,
    ratio: float,
    epochs: int,
    ramp_epochs: int,
    example: torch.Tensor,
    **trainer_kwargs: Any,
) -> nn.Module:
    """``nncf.prune`` (global magnitude) ramped to ``ratio`` while fine-tuning, then int8 weights."""
    mode = nncf.PruneMode.UNSTRUCTURED_MAGNITUDE_GLOBAL
    initial = min(0.1, ratio / 2)
    model = nncf.prune(copy.deepcopy(base).train(), mode, ratio=initial, examples_inputs=example)
    scheduler = ExponentialMagnitudePruningScheduler(
        model, mode=mode, initial_ratio=initial, target_ratio=ratio, target_epoch=max(ramp_epochs - 1, 1)
    )
    train(
        model, datamodule, recipe, epochs, callbacks=[MagnitudePruningSchedule(scheduler)], **trainer_kwargs
    )
    for name, mask in get_pruned_modules(model).items():  # masks into the weights, then unwrapped
        get_weight(model, name).data.mul_(mask.binary_mask)
    unwrap_model(model)
    # int8 weights on NNCF's SymmetricQuantizer (per channel, zero stays zero): the counterpart of the
    # recipe's weight-only codebooks, NetVLAD's centroids included (a parameter no conv / linear consumes is
    # compressed only by name, as the recipe's template names it). Full nncf.quantize (int8 activations
    # too) cost this network about 12 mAP points (0.50 -> 0.37 on synth_oxford).
    int8 = {
        "compression": [
            {"algorithm": "uniform_quantization", "weights": {"bits": 8}},
            {
                "algorithm": "uniform_quantization",
                "weights": {"bits": 8},
                "target_scope": {"names": ["netvlad.centroids"]},
            },
        ]
    }
    nncf_ext.create_compression(model, int8, example)
    return model


# -- scoring -----------------------------------------------------------------------------------------------
def fp32_bytes(model: nn.Module) -> int:
    """Bytes of the uncompressed model's parameters and buffers (float32)."""
    return sum(t.numel() * 4 for t in model.state_dict().values() if t.is_floating_point())


def score(
    model: nn.Module,
    name: str,
    out_dir: Path,
    example: torch.Tensor,
    tests: dict[str, RevisitedData],
    image_size: int,
    base_bytes: int,
    float16: bool = False,
) -> dict[str, Any]:
    """Archive + IR of ``model`` (parity-checked against torch), and the IR's mAP on every test set;
    ``float16``: its floats rounded to float16 values first (:func:`nncf_ext.round_to_float16`)."""
    model.eval()
    if float16:
        nncf_ext.round_to_float16(model)
    archive = save_archive(model, out_dir / "archives" / f"{name}.dca")
    exported = export_openvino(model, example, out_dir / "ir" / f"{name}.xml")
    ir = OpenVINOModel(exported.xml_path, config=exact_config())
    stats = nncf_ext.compression_statistic(model)
    result: dict[str, Any] = {
        "name": name,
        "pruned": stats.sparsity,
        "archive_bytes": archive.nbytes,
        "ratio": base_bytes / archive.nbytes,
        "ir_bin_bytes": exported.bin_bytes,
        "parity_max_rel_error": exported.parity.max_rel if exported.parity else None,
    }
    for split, data in tests.items():
        result[split] = evaluate(ir, data, image_size)
    return result


# -- report ------------------------------------------------------------------------------------------------
def _mb(n: float) -> str:
    return f"{n / 1e6:.3f}"


def table(result: dict[str, Any]) -> str:
    """The paper's table for this run: drops are in mAP points (Medium) of the IR against the base IR."""
    splits = result["test_sets"]
    head = f"{'method':<34}{'threshold q':>12}{'pruned':>8}" + "".join(
        f"{'drop ' + s[6:]:>13}" for s in splits
    )
    head += f"{'archive MB':>12}{'ratio':>8}{'IR .bin MB':>12}"
    lines = [head, "-" * len(head)]
    for row in [result["base"], *result["rows"]]:
        cells = f"{row['method']:<34}{row.get('threshold', '-'):>12}{100 * row['pruned']:>7.1f}%"
        cells += "".join(f"{row['drop'][s]:>+13.1f}" for s in splits)
        cells += f"{_mb(row['archive_bytes']):>12}{row['ratio']:>7.1f}x{_mb(row['ir_bin_bytes']):>12}"
        lines.append(cells)
    base = result["base"]
    lines.append(
        "base mAP (Medium, IR): "
        + ", ".join(f"{s} {100 * base[s][METRIC]:.1f}" for s in splits)
        + "; untrained: "
        + ", ".join(f"{s} {100 * result['untrained'][s][METRIC]:.1f}" for s in splits)
    )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """Size (archive bytes, log scale) versus mAP (Medium) of the IR, one panel per held-out set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = result["test_sets"]
    fig, axes = plt.subplots(1, len(splits), figsize=(6 * len(splits), 4.5), squeeze=False)
    ours = sorted({r["group"] for r in result["rows"] if r["group"].startswith("ours")})
    colours = ("tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:cyan", "tab:olive", "tab:brown")
    styles = list(zip("osvph<>", colours, strict=True))
    groups = {
        **{group: styles[i % len(styles)] for i, group in enumerate(ours)},
        "NNCF magnitude pruning + int8 weights": ("^", "tab:red"),
        "fine-tuned FP32 (control)": ("D", "tab:gray"),
    }
    for ax, split in zip(axes[0], splits, strict=True):
        for group, (marker, colour) in groups.items():
            rows = sorted(
                (r for r in result["rows"] if r["group"] == group), key=lambda r: r["archive_bytes"]
            )
            if rows:
                ax.plot(
                    [r["archive_bytes"] / 1e3 for r in rows],
                    [100 * r[split][METRIC] for r in rows],
                    marker=marker,
                    color=colour,
                    label=group,
                )
        base = result["base"]
        ax.axhline(100 * base[split][METRIC], color="black", linestyle="--", linewidth=1, label="base FP32")
        ax.scatter([base["archive_bytes"] / 1e3], [100 * base[split][METRIC]], marker="*", color="black")
        ax.set_xscale("log")
        ax.set_xlabel("stored size (KB, Deep Compression archive)")
        ax.set_ylabel("mAP Medium of the OpenVINO IR (%)")
        ax.set_title(f"held out: {split}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, read off the rows: best ratio at no drop / within 2 points on both sets, and
    whether every NNCF point is beaten by one of ours that is no larger."""
    ours = [r for r in result["rows"] if r["group"].startswith("ours")]
    nncf_rows = [r for r in result["rows"] if r["group"].startswith("NNCF")]

    def worst_drop(r: dict[str, Any]) -> float:
        return max(r["drop"].values())

    def mean_drop(r: dict[str, Any]) -> float:
        return sum(r["drop"].values()) / len(r["drop"])

    def best(limit: float, drop: Callable[[dict[str, Any]], float] = worst_drop) -> float:
        return max((r["ratio"] for r in ours if drop(r) <= limit), default=0.0)

    def mean_map(r: dict[str, Any]) -> float:
        return sum(r[s][METRIC] for s in result["test_sets"]) / len(result["test_sets"])

    beaten = {
        n["name"]: any(o["archive_bytes"] <= n["archive_bytes"] and mean_map(o) > mean_map(n) for o in ours)
        for n in nncf_rows
    }
    return {
        "best_ratio_no_drop": best(0.0),  # on each held-out set
        "best_ratio_within_2_points": best(2.0),
        "best_ratio_no_drop_on_mean": best(0.0, mean_drop),  # on the mean of the two sets
        "best_ratio_within_2_points_on_mean": best(2.0, mean_drop),
        "nncf_points_beaten_at_equal_or_smaller_size": beaten,
    }


# -- the run -----------------------------------------------------------------------------------------------
def run(
    settings: DemoSettings | None = None,
    output_dir: str | Path = "outputs/demo",
    template: str | Path | None = None,
    data_root: str | Path | None = None,
) -> dict[str, Any]:
    """Run the demo; writes ``demo.json``, ``size_vs_map.png``, the row configs, archives and IRs."""
    settings = settings or DemoSettings()
    template_path = Path(template) if template is not None else TEMPLATE
    template_dict = json.loads(template_path.read_text())
    configs = row_configs(template_dict, settings.rows, settings.epochs)
    ramp_epochs = max(
        e.get("start_epoch", 0) for c in configs.values() for e in c["compression"] if "start_epoch" in e
    )
    out = Path(output_dir)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    recipe = settings.recipe
    paths = ensure_places_synth(data_root, settings.data)
    datamodule = RetrievalDataModule(
        paths[settings.train_set],
        paths[settings.test_sets[0]],
        image_size=recipe.image_size,
        batch_size=recipe.batch_size,
        num_negatives=recipe.num_negatives,
        seed=recipe.seed,
    )
    tests = {s: load_revisited(paths[s]) for s in settings.test_sets}
    trainer_kwargs: dict[str, Any] = {"enable_progress_bar": settings.progress_bar, "limit_val_batches": 0}
    example = torch.zeros(1, 3, recipe.image_size, recipe.image_size)

    print(
        f"[demo] base model: {recipe.arch} backbone, {recipe.image_size} px, trained on {settings.train_set}"
    )
    base = build_base(recipe, datamodule)
    untrained = {s: evaluate(base, d, recipe.image_size) for s, d in tests.items()}
    base_run = train(base, datamodule, recipe, **trainer_kwargs)
    base_bytes = fp32_bytes(base)
    result: dict[str, Any] = {
        "settings": asdict(settings),
        "template": str(template_path),
        "test_sets": list(settings.test_sets),
        "untrained": untrained,
        "base_torch": {s: evaluate(base, d, recipe.image_size) for s, d in tests.items()},
        "base_train_seconds": base_run["seconds"],
        "fp32_bytes": base_bytes,
        "parameters": sum(p.numel() for p in base.parameters()),
    }
    result["base"] = {
        **score(base, "base_fp32", out, example, tests, recipe.image_size, base_bytes),
        "method": "base FP32",
        "group": "base",
    }
    tune = fine_tuning(recipe)
    rows: list[dict[str, Any]] = []

    def finish(row: dict[str, Any]) -> None:
        row["drop"] = {s: 100 * (result["base"][s][METRIC] - row[s][METRIC]) for s in settings.test_sets}
        rows.append(row)
        drops = ", ".join(f"{s} {d:+.1f}" for s, d in row["drop"].items())
        print(f"[demo] {row['method']}: {100 * row['pruned']:.1f}% pruned, {row['ratio']:.1f}x, drop {drops}")

    for row in settings.rows:
        config_path = out / "configs" / f"{row.name}.json"
        model = compress_row(
            base, configs[row.name], config_path, datamodule, tune, settings.epochs, **trainer_kwargs
        )
        scored = score(model, row.name, out, example, tests, recipe.image_size, base_bytes, settings.float16)
        group = f"ours {row.bits_label}-bit" + (", whitening per row" if row.per_row else "")
        method = f"prune + L1, {row.bits_label}-bit k-means"
        finish({**scored, "method": method, "group": group, "threshold": row.threshold_label})
    for ratio in settings.nncf_ratios:
        pruned = nncf_prune_int8(
            base, datamodule, tune, ratio, settings.epochs, ramp_epochs, example, **trainer_kwargs
        )
        name = f"nncf_prune{ratio:g}_int8"
        scored = score(pruned, name, out, example, tests, recipe.image_size, base_bytes, settings.float16)
        group = "NNCF magnitude pruning + int8 weights"
        finish({**scored, "method": f"nncf.prune {ratio:.0%} + int8 weights", "group": group})
    if settings.control:
        model = copy.deepcopy(base).train()
        train(model, datamodule, tune, settings.epochs, **trainer_kwargs)
        scored = score(model, "fine_tuned_fp32", out, example, tests, recipe.image_size, base_bytes)
        finish({**scored, "method": "fine-tuned FP32 (control)", "group": "fine-tuned FP32 (control)"})
    result["base"]["drop"] = {s: 0.0 for s in settings.test_sets}
    result["rows"] = rows
    result["targets"] = targets(result)
    result["seconds"] = time.perf_counter() - start
    print(table(result))
    print(json.dumps(result["targets"], indent=1))
    plot(result, out / "size_vs_map.png")
    (out / "demo.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"[demo] {result['seconds'] / 60:.1f} min; wrote {out / 'demo.json'} and {out / 'size_vs_map.png'}")
    return result
