"""Run every benchmark in sequence (``make bench``); each prints its table and writes JSON under
``outputs/benchmarks/``. Long: over an hour on 2 CPU cores, most of it the pose training and MQAT runs (the
MQAT comparisons with the README's settings, three seeds each).

    .venv/bin/python benchmarks/run_all.py [--only kmeans_throughput ilp_speed ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS: list[tuple[str, list[str]]] = [
    ("kmeans_throughput", []),
    ("ilp_speed", []),
    ("clustered_training_step", []),
    ("export_retrieval", []),
    ("retrieval_base", []),
    ("retrieval_rows", ["--base", "outputs/benchmarks/retrieval_rows_base.pt"]),
    ("pose_base", ["--checkpoint", "outputs/pose_base.pt"]),
    ("mqat_pose", ["--task", "retrieval", "--seeds", "0", "1", "2"]),
    ("mqat_pose", ["--task", "pose", "--base", "outputs/pose_base.pt", "--epochs", "3",
                   "--train-limit", "2000", "--seeds", "0", "1", "2"]),
    ("mqat_pose", ["--task", "pose", "--base", "outputs/pose_base.pt", "--epochs", "3",
                   "--train-limit", "2000", "--seeds", "0", "1", "2",
                   "--modules", "benchmarks/five_modules.json", "--sensitivity", "loss"]),
    ("mqat_pose", ["--task", "retrieval", "--seeds", "0", "1", "2", "--targets", "8", "--equal-bops",
                   "--at-once"]),
    ("mqat_pose", ["--task", "pose", "--base", "outputs/pose_base.pt", "--epochs", "3",
                   "--train-limit", "2000", "--seeds", "3", "4", "5", "--targets", "8", "--equal-bops",
                   "--at-once", "--modules", "benchmarks/five_modules.json", "--sensitivity", "loss"]),
]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", help="run only these benchmarks")
    args = parser.parse_args()
    failed = []
    for name, extra in BENCHMARKS:
        if args.only and name not in args.only:
            continue
        command = [sys.executable, "-m", f"benchmarks.{name}", *extra]
        print(f"\n=== {' '.join(command[2:])}", flush=True)
        start = time.perf_counter()
        code = subprocess.call(command, cwd=ROOT)
        print(f"=== {name}: exit {code}, {time.perf_counter() - start:.0f} s", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
