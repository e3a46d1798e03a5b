"""Base 6D pose model on the embedded data set: ADD(-S) accuracy per depth bin and training time.

Targets (issue 6): ADD-0.1d >= 60% on the embedded test set; base training under 20 minutes on 2 CPU cores.
One training run; the trained model is then evaluated with the three keypoint aggregations side by side.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

# OpenMP threads sleep instead of spinning while they wait (see examples/pose.py); set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

AGGREGATIONS = ("mean", "median", "ransac")


def main() -> None:
    import torch

    from benchmarks.common import report
    from lightning_modules.data.pose_synth import SynthConfig, pose_synth
    from lightning_modules.metrics.pose import DEPTH_BINS, THRESHOLDS
    from lightning_modules.pose.keypoints import KEYPOINTS
    from lightning_modules.pose.run import TrainConfig, data_loaders, evaluate, metrics_table, train_base

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--train-limit", type=int, help="use only the first N training images")
    parser.add_argument("--checkpoint", help="also save the trained model here (for benchmarks.mqat_pose)")
    parser.add_argument("--keypoints", choices=sorted(KEYPOINTS), default=TrainConfig.keypoints)
    parser.add_argument("--precision", choices=["32-true", "bf16-mixed"], help="default: bf16 where native")
    args = parser.parse_args()

    start = time.perf_counter()
    root = pose_synth(SynthConfig())
    data_seconds = time.perf_counter() - start
    cfg = TrainConfig(
        epochs=args.epochs, train_limit=args.train_limit, keypoints=args.keypoints, precision=args.precision
    )
    load_before = os.getloadavg()
    module, result = train_base(root, cfg)
    load_after = os.getloadavg()
    print(
        f"training: {result['train_seconds']:.0f} s, {result['train_images']} images x {cfg.epochs} epochs "
        f"({torch.get_num_threads()} threads; load average {load_before[0]:.1f} -> {load_after[0]:.1f})"
    )
    print(metrics_table(result["metrics"]))

    _, test_loader, _ = data_loaders(root, cfg)
    default = module.hparams["aggregation"]
    by_aggregation: dict[str, Any] = {}
    for aggregation in AGGREGATIONS:
        module.hparams["aggregation"] = aggregation
        metrics, seconds = evaluate(module, test_loader)
        by_aggregation[aggregation] = {"metrics": metrics, "eval_ms_per_image": 1000 * seconds}
    module.hparams["aggregation"] = default

    header = [
        "aggregation",
        *(f"ADD-{k:g}d" for k in THRESHOLDS),
        *(f"0.1d {b}" for b in DEPTH_BINS),
        "ms/img",
    ]
    rows = [
        [
            name,
            *(f"{100 * r['metrics'][f'add_{k:g}d']:.1f}%" for k in THRESHOLDS),
            *(f"{100 * r['metrics'][f'add_0.1d_{b}']:.1f}%" for b in DEPTH_BINS),
            f"{r['eval_ms_per_image']:.1f}",
        ]
        for name, r in by_aggregation.items()
    ]
    target = {"add_0.1d_min": 0.60, "train_seconds_max": 20 * 60}
    summary = {
        **result,
        "data_seconds": data_seconds,
        "load_average_before_after": [load_before[0], load_after[0]],
        "threads": torch.get_num_threads(),
        "default_aggregation": default,
        "by_aggregation": by_aggregation,
        "target": target,
        "meets_accuracy_target": result["metrics"]["add_0.1d"] >= target["add_0.1d_min"],
        "meets_time_target": result["train_seconds"] <= target["train_seconds_max"],
    }
    report("pose_base", header, rows, summary)
    if args.checkpoint:
        state = {
            "hparams": dict(module.hparams),
            "state_dict": module.model.state_dict(),
            "keypoints": cfg.keypoints,
        }
        torch.save(state, args.checkpoint)


if __name__ == "__main__":
    main()
