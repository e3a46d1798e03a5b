"""Hook module of k-means trained quantization: a trainable codebook and an index per weight.

The forward pass returns ``codebook[index]``; the backward pass gives each centroid the sum (or mean) of
the gradients of the weights that share it (Deep Compression's trained quantization). With a zero
centroid, entries pruned earlier map to index 0 whose value is fixed at exactly zero.
"""

from __future__ import annotations

from typing import Any

import torch

from nncf_ext.hooks import WeightHook


class CodebookLookup(torch.autograd.Function):
    """``codebook[index]`` with a per-cluster gradient reduction computed by one ``index_add``."""

    @staticmethod
    def forward(
        ctx: Any, codebook: torch.Tensor, index: torch.Tensor, counts: torch.Tensor | None
    ) -> torch.Tensor:
        ctx.save_for_backward(index, counts)
        ctx.k = codebook.numel()
        return codebook.index_select(0, index)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        index, counts = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        # summed in float32 (at least): thousands of bf16 / fp16 terms per centroid would lose a third
        acc = torch.promote_types(grad.dtype, torch.float32)
        summed = torch.zeros(ctx.k, dtype=acc, device=grad.device).index_add_(
            0, index, grad.reshape(-1).to(acc)
        )
        if counts is not None:
            summed = summed / counts.clamp(min=1).to(acc)
        return summed.to(grad.dtype), None, None


class KMeansQuantizer(WeightHook):
    """Weight sharing with ``2 ** bits`` trained centroids.

    :param assignment: ``frozen`` (Deep Compression: indices fixed, only centroids train) or ``reassign``
        (TF-MOT: indices recomputed from the latent float weights, which receive a straight-through gradient).
    :param zero_centroid: reserve index 0 for an exact, untrainable zero (sparsity preserving).
    :param reduction: ``sum`` or ``mean`` of the weight gradients per centroid.
    """

    codebook: torch.nn.Parameter
    index: torch.Tensor
    active: torch.Tensor
    trainable: torch.Tensor

    def __init__(
        self,
        shape: tuple[int, ...] | list[int],
        bits: int,
        assignment: str = "frozen",
        zero_centroid: bool = True,
        reduction: str = "sum",
    ) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.bits = int(bits)
        self.assignment = assignment
        self.zero_centroid = bool(zero_centroid)
        self.reduction = reduction
        k = 1 << self.bits
        self.codebook = torch.nn.Parameter(torch.zeros(k))
        self.register_buffer("index", torch.zeros(self.shape, dtype=torch.uint8 if k <= 256 else torch.int32))
        self.register_buffer("active", torch.zeros((), dtype=torch.bool))
        trainable = torch.ones(k)
        if self.zero_centroid:
            trainable[0] = 0.0
        self.register_buffer("trainable", trainable, persistent=False)
        self._flat_index: torch.Tensor | None = None
        self._counts: torch.Tensor | None = None
        self.register_load_state_dict_post_hook(KMeansQuantizer._after_load)  # a function: picklable

    @staticmethod
    def _after_load(module: torch.nn.Module, incompatible: Any) -> None:
        assert isinstance(module, KMeansQuantizer)
        module.invalidate()

    @property
    def k(self) -> int:
        return int(self.codebook.numel())

    def invalidate(self) -> None:
        """Drop the cached int32 index and cluster sizes (after ``index`` changed)."""
        self._flat_index = None
        self._counts = None

    def effective_codebook(self) -> torch.Tensor:
        return self.codebook * self.trainable if self.zero_centroid else self.codebook

    def flat_index(self) -> torch.Tensor:
        if self._flat_index is None or self._flat_index.device != self.index.device:
            self._flat_index = self.index.reshape(-1).to(torch.int32)
            self._counts = None
        return self._flat_index

    def cluster_sizes(self) -> torch.Tensor:
        if self._counts is None:
            self._counts = torch.bincount(self.flat_index(), minlength=self.k)
        return self._counts

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not bool(self.active):
            return weight
        counts = self.cluster_sizes() if self.reduction == "mean" else None
        quantized = CodebookLookup.apply(self.effective_codebook(), self.flat_index(), counts)
        quantized = quantized.reshape(weight.shape).to(weight.dtype)
        if self.assignment == "reassign" and weight.requires_grad:
            return quantized + (weight - weight.detach())  # straight-through to the latent weights
        return quantized

    @torch.no_grad()
    def set_clusters(self, codebook: torch.Tensor, index: torch.Tensor) -> None:
        """Install centroids and indices (from k-means) and switch the quantizer on."""
        self.codebook.copy_(codebook.to(self.codebook))
        self.index.copy_(index.reshape(self.shape).to(self.index.dtype))
        self.active.fill_(True)
        self.invalidate()

    def storage_bits(self) -> int | None:
        return self.bits if bool(self.active) else None

    def codebook_entries(self) -> int:
        return self.k if bool(self.active) else 0

    def value_codes(self) -> torch.Tensor | None:
        """The stored symbol of every weight: its centroid index (None before clustering)."""
        return self.index if bool(self.active) else None

    def get_config(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "bits": self.bits,
            "assignment": self.assignment,
            "zero_centroid": self.zero_centroid,
            "reduction": self.reduction,
        }

    def extra_repr(self) -> str:
        return (
            f"shape={self.shape}, bits={self.bits}, assignment={self.assignment}, active={bool(self.active)}"
        )
