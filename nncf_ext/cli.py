"""The ``nncf-ext`` command line: the composition layer over nncf_ext and the task package.

Subcommands import task code lazily, so ``nncf_ext`` itself never depends on ``lightning_modules``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nncf_ext.errors import NNCFExtError
from nncf_ext.statistics import compression_statistic


def _at_least(low: int) -> Any:
    """An argparse type: an integer >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


POSITIVE, NON_NEGATIVE = _at_least(1), _at_least(0)


def output_file(text: str) -> Path:
    """An argparse type: a file that can be written, checked before a long run (its folder is created)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot create the folder {path.parent}: {e.strerror}") from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise argparse.ArgumentTypeError(f"cannot write {text}")
    return path


def _demo(args: argparse.Namespace) -> int:
    if args.task == "toy":
        from lightning_modules.toy import demo as toy

        epochs = 6 if args.epochs is None else args.epochs
        toy.run(config=args.config, epochs=epochs, output_dir=args.output_dir, seed=args.seed)
        return 0
    from dataclasses import replace

    from lightning_modules.retrieval import demo
    from lightning_modules.retrieval.recipe import BaseRecipe

    settings = demo.DemoSettings(recipe=replace(BaseRecipe(), seed=args.seed))
    if args.epochs is not None:
        settings = replace(settings, epochs=args.epochs)
    demo.run(settings, args.output_dir, template=args.config)
    return 0


def _compress(args: argparse.Namespace) -> int:
    import pytorch_lightning as pl

    from lightning_modules.callbacks import NNCFCompressionCallback
    from lightning_modules.tasks import get_task, load_compressed, network, save_compressed

    task = get_task(args.task)
    pl.seed_everything(args.seed, verbose=False)
    callback = NNCFCompressionCallback(args.config)
    if args.init_from:
        source, base, payload = load_compressed(args.init_from)
        if source != task.name:
            raise NNCFExtError(f"--init-from holds a '{source}' model, not a '{task.name}' one")
        from nncf.torch.function_hook.wrapper import ATR_HOOK_STORAGE

        module = task.module(**payload["hparams"])  # the base's settings (widths, ...): its weights fit
        state = network(base).state_dict()
        network(module).load_state_dict(
            {k: v for k, v in state.items() if ATR_HOOK_STORAGE not in k.split(".")}
        )
    else:
        module = task.module()
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
    datamodule = task.datamodule(args.data, args.batch_size, args.seed, dict(module.hparams))
    callback.example_input = task.example_input(datamodule)  # real inputs: activation ranges start from them
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


def _example_input(module: Any) -> Any:
    example = getattr(module, "example_input_array", None)
    if example is None:
        raise NNCFExtError(f"{type(module).__name__} has no example_input_array to export with")
    return example


def _export(args: argparse.Namespace) -> int:
    from lightning_modules.tasks import load_compressed, network
    from nncf_ext.export import export_openvino, round_to_float16, save_archive

    _, module, _ = load_compressed(args.checkpoint)
    model = network(module)
    if args.round_fp16:
        round_to_float16(model)
    result = export_openvino(
        model,
        _example_input(module),
        args.output,
        compress_to_fp16=args.fp16,
        check=not args.no_check,
        tolerance=args.tolerance,
        device=args.device,
    )
    summary = result.to_dict()
    if args.archive:
        info = save_archive(model, args.archive)
        summary["archive"] = {"path": str(info.path), "nbytes": info.nbytes}
    print(json.dumps(summary, indent=2))
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    from lightning_modules.tasks import load_compressed, network
    from nncf_ext.export.benchmark import benchmark_model, timings_table, timings_to_dict

    _, module, _ = load_compressed(args.checkpoint)
    timings = benchmark_model(
        network(module),
        _example_input(module),
        args.output_dir,
        device=args.device,
        batch_sizes=args.batch_sizes,
        warmup=args.warmup,
        repeats=args.repeats,
        threads=args.threads,
    )
    print(timings_table(timings))
    out = Path(args.output_dir) / "benchmark.json"
    out.write_text(
        json.dumps(
            {"device": args.device, "threads": args.threads, "timings": timings_to_dict(timings)}, indent=2
        )
    )
    print(f"results written to {out}; the IRs also run with OpenVINO's benchmark_app -m <xml>")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nncf-ext",
        description="Training-time compression for NNCF (torch) and OpenVINO.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train, compress, export and report on an embedded dataset")
    demo.add_argument(
        "--task",
        choices=("retrieval", "toy"),
        default="retrieval",
        help="retrieval: the paper's table and plot (~12 min); toy: pruning on gratings (seconds)",
    )
    demo.add_argument(
        "--config",
        default=None,
        help="retrieval: recipe template (default examples/configs/place_recognition.json); "
        "toy: the compression config",
    )
    demo.add_argument(
        "--epochs", type=POSITIVE, default=None, help="fine-tuning epochs (default: the demo's)"
    )
    demo.add_argument("--output-dir", default="outputs/demo", help="where results (JSON) are written")
    demo.add_argument("--seed", type=int, default=0, help="random seed")
    demo.set_defaults(func=_demo)

    compress = sub.add_parser("compress", help="train a task model under a compression config (Lightning)")
    compress.add_argument("--task", required=True, help="task to train: toy or retrieval")
    compress.add_argument("--config", required=True, help="compression config JSON")
    compress.add_argument(
        "--data",
        default=None,
        help="the task's data: retrieval TRAIN_DIR,TEST_DIR (default: the task's embedded data)",
    )
    compress.add_argument("--epochs", type=POSITIVE, default=5, help="training epochs")
    compress.add_argument(
        "--batch-size", type=POSITIVE, default=None, help="batch size (default: the task's)"
    )
    compress.add_argument("--output-dir", default="outputs/compress", help="checkpoints, logs, compressed.pt")
    compress.add_argument("--init-from", default=None, help="start from the weights of a compressed.pt")
    compress.add_argument("--resume", default=None, help="Lightning checkpoint (last.ckpt) to resume from")
    compress.add_argument("--devices", type=POSITIVE, default=1, help="number of CPU processes")
    compress.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. ddp")
    compress.add_argument("--seed", type=int, default=0, help="random seed")
    compress.set_defaults(func=_compress)

    stats = sub.add_parser("stats", help="compression statistics of a compressed.pt")
    stats.add_argument("checkpoint", help="compressed.pt written by `nncf-ext compress`")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.set_defaults(func=_stats)

    export = sub.add_parser("export", help="export a compressed.pt to an OpenVINO IR with compressed weights")
    export.add_argument("checkpoint", help="compressed.pt written by `nncf-ext compress`")
    export.add_argument("--output", default="outputs/export/model.xml", help="path of the .xml to write")
    export.add_argument("--archive", default=None, help="also write the Deep Compression archive here (.dca)")
    export.add_argument(
        "--fp16",
        action="store_true",
        help="store float weights, scales and codebooks in fp16 (not those before a FakeQuantize)",
    )
    export.add_argument(
        "--round-fp16",
        action="store_true",
        help="round the model's floats to float16 values first: the archive stores them in 2 bytes, "
        "and the IR and the archive hold the same values",
    )
    export.add_argument("--tolerance", type=float, default=1e-3, help="largest relative error of the IR")
    export.add_argument("--no-check", action="store_true", help="skip the parity check against torch")
    export.add_argument("--device", default="CPU", help="OpenVINO device of the parity check: CPU, GPU, NPU")
    export.set_defaults(func=_export)

    bench = sub.add_parser("benchmark", help="latency of torch eager, FP32 IR and compressed IR side by side")
    bench.add_argument("checkpoint", help="compressed.pt written by `nncf-ext compress`")
    bench.add_argument(
        "--output-dir", default="outputs/benchmark", help="where the IRs and benchmark.json go"
    )
    bench.add_argument("--device", default="CPU", help="OpenVINO device: CPU, GPU or NPU")
    bench.add_argument("--batch-sizes", type=POSITIVE, nargs="+", default=[1, 8], help="batch sizes to time")
    bench.add_argument("--warmup", type=NON_NEGATIVE, default=5, help="untimed runs before timing")
    bench.add_argument("--repeats", type=POSITIVE, default=30, help="timed runs (the median is reported)")
    bench.add_argument("--threads", type=POSITIVE, default=None, help="CPU threads for torch and OpenVINO")
    bench.set_defaults(func=_benchmark)
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
