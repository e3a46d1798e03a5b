"""1-D k-means throughput: ours (histogram atoms) vs NNCF's experimental weighted k-means, same run.

Target (issue 3): at least 100 M weights/s for 256 clusters; a 4096 x 16384 whitening matrix in under 1 s.
"""

from __future__ import annotations

import argparse

import torch
from nncf.experimental.quantization.algorithms.weight_compression.codebook_estimation import (
    weights_clusterization_k_means,
)
from nncf.tensor import Tensor

from benchmarks.common import measure, report
from nncf_ext.algorithms.kmeans_quantization import kmeans_1d


def mse(weight: torch.Tensor, centroids: torch.Tensor, index: torch.Tensor) -> float:
    return float((centroids[index.long()].reshape(weight.shape) - weight).pow(2).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (median reported)")
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    big = torch.randn(4096, 16384, generator=gen) * 0.01
    small = torch.randn(1024, 1024, generator=gen) * 0.01
    rows, cases = [], []
    for label, weight, k in (("4096x16384", big, 256), ("4096x16384", big, 32), ("1024x1024", small, 256),
                             ("1024x1024", small, 16)):  # fmt: skip
        t = measure(lambda w=weight, k=k: kmeans_1d(w, k), repeats=args.repeats)
        r = kmeans_1d(weight, k)
        rate = weight.numel() / t["median_s"] / 1e6
        case = {"method": "nncf_ext.kmeans_1d", "shape": label, "k": k, **t, "mweights_per_s": rate,
                "mse": mse(weight, r.centroids, r.index)}  # fmt: skip
        cases.append(case)
        rows.append(
            [case["method"], label, k, f"{t['median_s'] * 1000:.0f} ms", f"{rate:.0f}", f"{case['mse']:.3e}"]
        )
        if weight.numel() <= 1 << 20:  # NNCF's sorts in numpy and loops in Python: small matrices only
            w_np = Tensor(weight.numpy())
            imp = Tensor(torch.ones_like(weight).numpy())
            t2 = measure(
                lambda w=w_np, i=imp, k=k: weights_clusterization_k_means(w, i, k), repeats=1, warmup=0
            )
            cb, idx, _ = weights_clusterization_k_means(w_np, imp, k)
            err = mse(weight, torch.from_numpy(cb.data), torch.from_numpy(idx.data))
            rate2 = weight.numel() / t2["median_s"] / 1e6
            cases.append({"method": "nncf.experimental KMeansWeighted", "shape": label, "k": k, **t2,
                          "mweights_per_s": rate2, "mse": err})  # fmt: skip
            rows.append(["nncf KMeansWeighted", label, k, f"{t2['median_s'] * 1000:.0f} ms", f"{rate2:.1f}",
                         f"{err:.3e}"])  # fmt: skip
    report("kmeans_throughput", ["method", "weight", "k", "median time", "M weights/s", "MSE"], rows,
           {"threads": torch.get_num_threads(), "cases": cases})  # fmt: skip


if __name__ == "__main__":
    main()
