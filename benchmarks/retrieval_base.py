"""Base place-recognition model on the embedded data: trained vs untrained mAP, training time, speed.

Target (issue 5): the base model's mAP (Medium) far above an untrained network of the same architecture, with
base training a few minutes at most on 2 CPU cores. One run, side by side: the network at default init, the
same network with NetVLAD and PCA whitening initialised from training data (where fine-tuning starts), and
the trained base model, as the demo builds it (trained on ``synth_train``, scored on ``synth_oxford``);
descriptor time is the median of repeated batches.

    .venv/bin/python -m benchmarks.retrieval_base [--epochs 12] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import time
from dataclasses import asdict, replace
from typing import Any

import torch

from benchmarks.common import measure, report
from lightning_modules.data.places_synth import SynthConfig, ensure_places_synth
from lightning_modules.retrieval.evaluation import describe, evaluate
from lightning_modules.retrieval.recipe import BaseRecipe, build_base, embedded_datamodule, train

METRICS = ("mAP_easy", "mAP_medium", "mAP_hard", "mP@1_medium", "mP@5_medium", "mP@10_medium")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=BaseRecipe.epochs)
    parser.add_argument("--seed", type=int, default=BaseRecipe.seed)
    parser.add_argument("--repeats", type=int, default=5, help="timed descriptor batches (median reported)")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    recipe = replace(BaseRecipe(), epochs=args.epochs, seed=args.seed)

    start = time.perf_counter()
    ensure_places_synth()
    data_seconds = time.perf_counter() - start
    dm = embedded_datamodule(recipe, train="synth_train")  # the demo's base: trained on synth_train
    size = recipe.image_size

    variants: dict[str, dict[str, Any]] = {}
    random_init = build_base(recipe, dm, init=False)
    variants["default init"] = {"model": random_init}
    untrained = build_base(recipe, dm)
    variants["untrained (NetVLAD + PCA from data)"] = {"model": copy.deepcopy(untrained)}
    load_before = os.getloadavg()[0]
    run = train(untrained, dm, recipe, limit_val_batches=0)  # the timed fit is training only
    load_after = os.getloadavg()[0]
    variants["trained base"] = {"model": untrained, "train_seconds": run["seconds"]}

    batch = torch.stack([dm.val_dataloader().dataset[i][0] for i in range(64)])
    for variant in variants.values():
        model = variant["model"].eval()
        variant["metrics"] = evaluate(model, dm.val_data, size)
        timing = measure(functools.partial(describe, model, batch), repeats=args.repeats)
        variant["ms_per_image"] = 1000 * timing["median_s"] / len(batch)

    header = ["model", *METRICS, "ms/img"]
    rows = [
        [name, *(f"{v['metrics'][m]:.3f}" for m in METRICS), f"{v['ms_per_image']:.2f}"]
        for name, v in variants.items()
    ]
    trained, base = (
        variants["trained base"]["metrics"],
        variants["untrained (NetVLAD + PCA from data)"]["metrics"],
    )
    params = sum(p.numel() for p in untrained.parameters())
    print(
        f"training: {recipe.epochs} epochs in {run['seconds']:.0f} s ({torch.get_num_threads()} threads, "
        f"load average {load_before:.1f} -> {load_after:.1f}); data {data_seconds:.1f} s; "
        f"{params / 1e6:.2f} M params; mAP medium {trained['mAP_medium'] / base['mAP_medium']:.1f}x the "
        "untrained network's"
    )
    summary = {
        "recipe": asdict(recipe),
        "data": {
            "synth": asdict(SynthConfig()),
            "train": str(dm.train_data.root),
            "test": str(dm.val_data.root),
        },
        "data_seconds": data_seconds,
        "train_seconds": run["seconds"],
        "load_average_before_after": [load_before, load_after],
        "threads": torch.get_num_threads(),
        "parameters": params,
        "variants": {name: {k: v for k, v in var.items() if k != "model"} for name, var in variants.items()},
        "map_medium_ratio_trained_vs_untrained": trained["mAP_medium"] / base["mAP_medium"],
    }
    report("retrieval_base", header, rows, summary)


if __name__ == "__main__":
    main()
