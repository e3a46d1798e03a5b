"""Helpers shared by the benchmarks: repeated timing with medians, a printed table, JSON results."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nncf.common.utils.helpers import create_table

RESULTS = Path("outputs") / "benchmarks"


def measure(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median, min and max wall time of ``fn`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "repeats": repeats,
    }


def report(name: str, header: Sequence[str], rows: Sequence[Sequence[Any]], result: dict[str, Any]) -> Path:
    """Print a table and write ``result`` as JSON under outputs/benchmarks/."""
    print(create_table(header=list(header), rows=[list(r) for r in rows]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"results written to {path}")
    return path
