"""Training-step time of a clustered AlexNet-style network against the plain network, same run.

Target (issue 3): the clustered step (8-bit codebooks on conv layers, 5-bit on the classifier) costs at most
1.3x the plain step. Also reports the k-means time of clustering the whole network once.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import nncf_ext
from benchmarks.common import measure, report
from lightning_modules.retrieval.backbones import AlexNetFeatures


class AlexNetClassifier(nn.Module):
    """torchvision-named AlexNet features, global pooling and a linear classifier."""

    def __init__(self, classes: int = 100) -> None:
        super().__init__()
        self.features = AlexNetFeatures()
        self.classifier = nn.Linear(256, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def step_fn(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, pipeline: nncf_ext.CompressionPipeline | None
):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        if pipeline is not None:
            pipeline.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=16, help="images per step")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=7, help="timed steps (median reported)")
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=g)
    y = torch.randint(0, 100, (args.batch,), generator=g)
    torch.manual_seed(0)
    plain = AlexNetClassifier()
    torch.manual_seed(0)
    clustered = AlexNetClassifier()
    config = {
        "compression": [
            {"algorithm": "threshold_pruning", "criterion": "std", "threshold": 0.5},
            {"algorithm": "kmeans_quantization", "bits": 8, "bits_per_scope": {"types": {"linear": 5}}},
        ]
    }
    start = time.perf_counter()
    pipeline = nncf_ext.create_compression(clustered, config, x[:1])
    setup_s = time.perf_counter() - start
    t_plain = measure(step_fn(plain, x, y, None), repeats=args.repeats, warmup=2)
    t_clustered = measure(step_fn(clustered, x, y, pipeline), repeats=args.repeats, warmup=2)
    ratio = t_clustered["median_s"] / t_plain["median_s"]
    rows = [
        ["plain", f"{t_plain['median_s'] * 1000:.0f}", "1.00"],
        ["pruned + k-means (8-bit conv, 5-bit fc)", f"{t_clustered['median_s'] * 1000:.0f}", f"{ratio:.2f}"],
    ]
    result = {
        "batch": args.batch, "size": args.size, "threads": torch.get_num_threads(), "plain": t_plain,
        "clustered": t_clustered, "ratio": ratio, "target_ratio": 1.3,
        "compression_setup_s": setup_s, "params": sum(p.numel() for p in plain.parameters()),
    }  # fmt: skip
    report("clustered_training_step", ["network", "median step ms", "ratio"], rows, result)
    print(f"create_compression (graph, pruning, k-means of every layer): {setup_s:.2f} s")


if __name__ == "__main__":
    main()
