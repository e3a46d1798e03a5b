"""Latency and throughput of a compressed model, side by side in one run: torch eager (FP32), the FP32
OpenVINO IR and the compressed IR; warm-up, repeated runs, medians, batch 1 and a larger batch."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import openvino as ov
import torch
from nncf.common.utils.helpers import create_table
from torch import nn

from nncf_ext.export.openvino import export_openvino
from nncf_ext.export.parity import to_numpy_inputs
from nncf_ext.export.strip import strip_for_export
from nncf_ext.model import unwrap_model
from nncf_ext.statistics import format_bytes


@dataclass
class Timing:
    variant: str
    batch: int
    median_ms: float
    p90_ms: float
    throughput: float  # samples / s
    size_bytes: int | None
    repeats: int


def time_calls(fn: Callable[[], Any], warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def _timing(variant: str, batch: int, times: list[float], size: int | None) -> Timing:
    ordered = sorted(times)
    median = statistics.median(times)
    return Timing(
        variant,
        batch,
        median,
        ordered[math.ceil(0.9 * len(ordered)) - 1],  # nearest rank: never below 90% of the calls
        batch * 1000 / median,
        size,
        len(times),
    )


def batched(example: torch.Tensor, batch: int) -> torch.Tensor:
    """``example`` repeated (with a little noise) along the batch axis to ``batch`` samples."""
    g = torch.Generator().manual_seed(batch)
    base = example[:1].expand(batch, *example.shape[1:])
    return base + 0.01 * torch.randn(base.shape, generator=g) if example.is_floating_point() else base


def compile_ir(xml: str | Path, device: str, threads: int | None) -> Any:
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
    if threads and device == "CPU":
        config["INFERENCE_NUM_THREADS"] = threads
    return ov.Core().compile_model(str(xml), device, config)


def benchmark_model(
    model: nn.Module,
    example_input: torch.Tensor,
    out_dir: str | Path,
    *,
    device: str = "CPU",
    batch_sizes: Sequence[int] = (1, 8),
    warmup: int = 5,
    repeats: int = 30,
    threads: int | None = None,
    extra_irs: dict[str, Path] | None = None,
) -> list[Timing]:
    """Export the FP32 and the compressed IR to ``out_dir`` and time them beside torch eager.

    The FP32 variants (torch eager, ``fp32.xml``) run the model with every hook removed, activation
    quantizers included: float weights (the compressed values) and float activations.
    """
    out = Path(out_dir)
    stripped, _ = strip_for_export(model, example_input)
    unwrap_model(stripped)  # no FakeQuantize left: a true float baseline
    fp32 = export_openvino(stripped, example_input, out / "fp32.xml")
    compressed = export_openvino(model, example_input, out / "compressed.xml")
    irs = {
        "openvino fp32 IR": fp32.xml_path,
        "openvino compressed IR": compressed.xml_path,
        **(extra_irs or {}),
    }
    if threads:
        torch.set_num_threads(threads)
    results: list[Timing] = []
    for batch in batch_sizes:
        x = batched(example_input, batch)

        def eager(x: torch.Tensor = x) -> Any:
            with torch.no_grad():
                return stripped(x)

        results.append(_timing("torch eager fp32", batch, time_calls(eager, warmup, repeats), None))
        inputs = to_numpy_inputs(x)
        for name, xml in irs.items():
            compiled = compile_ir(xml, device, threads)
            size = Path(xml).with_suffix(".bin").stat().st_size

            def run(c: Any = compiled, i: Any = inputs) -> Any:
                return c(i)

            results.append(_timing(name, batch, time_calls(run, warmup, repeats), size))
    return results


def timings_table(timings: Sequence[Timing]) -> str:
    rows = [
        [t.variant, t.batch, f"{t.median_ms:.2f}", f"{t.p90_ms:.2f}", f"{t.throughput:.1f}",
         format_bytes(t.size_bytes) if t.size_bytes else "-"]
        for t in timings
    ]  # fmt: skip
    header = ["variant", "batch", "median ms", "p90 ms", "samples/s", ".bin size"]
    return str(create_table(header=header, rows=rows))


def timings_to_dict(timings: Sequence[Timing]) -> list[dict[str, Any]]:
    return [asdict(t) for t in timings]
