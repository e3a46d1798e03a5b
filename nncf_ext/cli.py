"""The ``nncf-ext`` command line: the composition layer over nncf_ext and the task package.

Subcommands import task code lazily, so ``nncf_ext`` itself never depends on ``lightning_modules``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from nncf_ext.errors import NNCFExtError


def _demo(args: argparse.Namespace) -> int:
    from lightning_modules.toy import demo

    demo.run(config=args.config, epochs=args.epochs, output_dir=args.output_dir, seed=args.seed)
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
