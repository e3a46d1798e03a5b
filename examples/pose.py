"""Train a base 6D pose model (PoseNet) and print ADD(-S) accuracy per depth bin.

python examples/pose.py                       # the embedded data set (generated and cached on first use)
python examples/pose.py --data /path/to/lm --obj-ids 1 5 --image-size 480 640 --train-split train_pbr
python examples/pose.py --data /path/to/tless --several-instances   # several instances of an object per image
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

# OpenMP threads that sleep instead of spinning while they wait: on a shared machine (other processes on
# the same cores) spinning makes a 2-thread training step up to 10x slower. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> dict[str, object]:
    from lightning_modules.data.pose_synth import SynthConfig, pose_synth
    from lightning_modules.pose.keypoints import KEYPOINTS
    from lightning_modules.pose.run import TrainConfig, metrics_table, train_base
    from nncf_ext.cli import POSITIVE, output_file

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, help="BOP data set root (default: the embedded set)")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--obj-ids", type=int, nargs="+")
    parser.add_argument(
        "--image-size", type=int, nargs=2, metavar=("H", "W"), help="resize (multiples of 32)"
    )
    parser.add_argument("--epochs", type=POSITIVE, default=TrainConfig.epochs)
    parser.add_argument("--batch-size", type=POSITIVE, default=TrainConfig.batch_size)
    parser.add_argument("--train-limit", type=POSITIVE, help="use only the first N training images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--keypoints",
        choices=sorted(KEYPOINTS),
        default=TrainConfig.keypoints,
        help="box corners + centre (WDR) or farthest-point surface samples + centre",
    )
    parser.add_argument(
        "--precision",
        choices=["32-true", "bf16-mixed"],
        help="training precision (default: bf16-mixed where the CPU has native bf16, else 32-true)",
    )
    parser.add_argument(
        "--several-instances",
        action="store_true",
        help="evaluate per image, every instance of an object decoded and matched (T-LESS, IC-BIN)",
    )
    parser.add_argument("--output", type=output_file, default="outputs/pose_base.json")
    parser.add_argument("--checkpoint", type=output_file, help="also save the model state_dict here")
    args = parser.parse_args(argv)

    root = args.data
    if root is None:
        start = time.perf_counter()
        root = pose_synth(SynthConfig())
        print(f"embedded data set: {root} ({time.perf_counter() - start:.0f} s to generate or find)")
    cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        train_limit=args.train_limit,
        image_size=tuple(args.image_size) if args.image_size else None,
        obj_ids=args.obj_ids,
        train_split=args.train_split,
        test_split=args.test_split,
        seed=args.seed,
        keypoints=args.keypoints,
        precision=args.precision,
        several_instances=args.several_instances,
    )
    module, result = train_base(root, cfg)
    print(f"trained {result['train_images']} images x {cfg.epochs} epochs in {result['train_seconds']:.0f} s")
    print(metrics_table(result["metrics"]))
    if args.checkpoint is not None:  # before the JSON, which says the run finished
        import torch

        torch.save(
            {
                "hparams": dict(module.hparams),
                "state_dict": module.model.state_dict(),
                "keypoints": cfg.keypoints,
            },
            args.checkpoint,
        )
    args.output.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
