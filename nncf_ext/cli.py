"""The ``nncf-ext`` command line: the composition layer over nncf_ext and the task package.

Subcommands import task code lazily, so ``nncf_ext`` itself never depends on ``lightning_modules``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from nncf_ext.errors import NNCFExtError
from nncf_ext.statistics import compression_statistic


def _demo(args: argparse.Namespace) -> int:
    from lightning_modules.toy import demo

    demo.run(config=args.config, epochs=args.epochs, output_dir=args.output_dir, seed=args.seed)
    return 0


def _compress(args: argparse.Namespace) -> int:
    import pytorch_lightning as pl

    from lightning_modules.callbacks import NNCFCompressionCallback
    from lightning_modules.tasks import get_task, load_compressed, network, save_compressed

    task = get_task(args.task)
    pl.seed_everything(args.seed, verbose=False)
    callback = NNCFCompressionCallback(args.config)
    module = task.module()
    if args.init_from:
        source, base, _ = load_compressed(args.init_from)
        if source != task.name:
            raise NNCFExtError(f"--init-from holds a '{source}' model, not a '{task.name}' one")
        network(module).load_state_dict(network(base).state_dict(), strict=False)
    out = Path(args.output_dir)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=args.devices,
        strategy=args.strategy,
        callbacks=[callback, pl.callbacks.ModelCheckpoint(dirpath=out, save_last=True)],
        default_root_dir=str(out),
        logger=pl.loggers.CSVLogger(str(out), name="logs"),
        enable_model_summary=False,
    )
    datamodule = task.datamodule(args.data, args.batch_size, args.seed)
    trainer.fit(module, datamodule, ckpt_path=args.resume, weights_only=True)
    if trainer.is_global_zero:
        path = save_compressed(out / "compressed.pt", task.name, module, callback.config)
        stats = compression_statistic(network(module))
        (out / "statistics.json").write_text(json.dumps(stats.to_dict(), indent=2))
        print(f"compressed model written to {path}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from lightning_modules.tasks import load_compressed, network

    _, module, _ = load_compressed(args.checkpoint)
    stats = compression_statistic(network(module))
    print(json.dumps(stats.to_dict(), indent=2) if args.json else stats)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nncf-ext",
        description="Training-time compression for NNCF (torch) and OpenVINO.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train, compress and report on the embedded dataset")
    demo.add_argument("--config", default=None, help="compression config JSON (default: the example recipe)")
    demo.add_argument("--epochs", type=int, default=6, help="epochs of base training and of compression")
    demo.add_argument("--output-dir", default="outputs/demo", help="where results (JSON) are written")
    demo.add_argument("--seed", type=int, default=0, help="random seed")
    demo.set_defaults(func=_demo)

    compress = sub.add_parser("compress", help="train a task model under a compression config (Lightning)")
    compress.add_argument("--task", required=True, help="task to train: toy, retrieval or pose")
    compress.add_argument("--config", required=True, help="compression config JSON")
    compress.add_argument(
        "--data", default=None, help="dataset root (default: the embedded dataset of the task)"
    )
    compress.add_argument("--epochs", type=int, default=5, help="training epochs")
    compress.add_argument("--batch-size", type=int, default=None, help="batch size (default: the task's)")
    compress.add_argument("--output-dir", default="outputs/compress", help="checkpoints, logs, compressed.pt")
    compress.add_argument("--init-from", default=None, help="start from the weights of a compressed.pt")
    compress.add_argument("--resume", default=None, help="Lightning checkpoint (last.ckpt) to resume from")
    compress.add_argument("--devices", type=int, default=1, help="number of CPU processes")
    compress.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. ddp")
    compress.add_argument("--seed", type=int, default=0, help="random seed")
    compress.set_defaults(func=_compress)

    stats = sub.add_parser("stats", help="compression statistics of a compressed.pt")
    stats.add_argument("checkpoint", help="compressed.pt written by `nncf-ext compress`")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.set_defaults(func=_stats)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except NNCFExtError as e:
        print(f"nncf-ext: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
