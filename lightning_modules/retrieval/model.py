"""``RetrievalNet``: conv backbone -> NetVLAD -> PCA whitening -> L2, the place-recognition model."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from lightning_modules.retrieval.backbones import BACKBONES, ConvFeatures
from lightning_modules.retrieval.netvlad import NetVLAD
from lightning_modules.retrieval.whitening import PCAWhitening
from nncf_ext.config_reader import is_integer
from nncf_ext.errors import ModelError

ARCH_DEFAULTS: dict[str, dict[str, int]] = {
    "small": {"num_clusters": 16, "whitening_dim": 256},
    "alexnet": {"num_clusters": 64, "whitening_dim": 4096},
    "vgg16": {"num_clusters": 64, "whitening_dim": 4096},
}


class RetrievalNet(nn.Module):
    """Images ``(N, 3, H, W)`` (ImageNet-normalised) -> ``(N, whitening.out_features)`` unit-norm descriptors.

    Three submodules, the units that mixed-precision work assigns bit widths to: ``backbone`` (conv features),
    ``netvlad`` and ``whitening`` (an ``nn.Linear``).
    """

    def __init__(self, backbone: ConvFeatures, netvlad: NetVLAD, whitening: PCAWhitening) -> None:
        super().__init__()
        if netvlad.dim != backbone.out_channels:
            raise ModelError(f"NetVLAD dim {netvlad.dim} != backbone channels {backbone.out_channels}")
        if whitening.in_features != netvlad.out_features:
            raise ModelError(
                f"whitening takes {whitening.in_features} inputs, NetVLAD gives {netvlad.out_features}"
            )
        self.backbone = backbone
        self.netvlad = netvlad
        self.whitening = whitening

    @property
    def out_features(self) -> int:
        return self.whitening.out_features

    def vlad(self, x: torch.Tensor) -> torch.Tensor:
        """Descriptors before whitening: ``(N, K * D)``, unit norm."""
        return self.netvlad(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.whitening(self.vlad(x)), dim=1)

    @torch.no_grad()
    def init_from_images(
        self, batches: Iterable[Any], locals_per_image: int = 64, max_locals: int = 50_000, seed: int = 0
    ) -> None:
        """Initialise NetVLAD (k-means of local descriptors) then whitening (PCA of VLAD vectors) from data.

        ``batches`` is re-iterable (a DataLoader, a list) of image tensors or of tuples that start with one.
        Runs in eval mode and restores the previous mode; on an error NetVLAD keeps its previous state.
        """
        if isinstance(batches, Iterator):  # a generator would be empty on the second (whitening) pass
            raise ModelError(
                "RetrievalNet.init_from_images: batches must be re-iterable (a DataLoader, a list)"
            )
        was_training = self.training
        previous = {k: v.clone() for k, v in self.netvlad.state_dict().items()}
        self.eval()
        g = torch.Generator().manual_seed(seed)
        try:
            local = []
            device = next(self.parameters()).device
            for images in _images(batches):
                feats = self.backbone(images.to(device)).flatten(2).transpose(1, 2)  # (N, HW, D)
                keep = torch.rand(feats.shape[:2], generator=g).argsort(1)[:, :locals_per_image]
                local.append(feats.gather(1, keep[..., None].expand(-1, -1, feats.shape[2]).to(feats.device)))
            count, dims = sum(len(x) for x in local), self.whitening.out_features
            if not count:
                raise ModelError("RetrievalNet.init_from_images: no images were given")
            if count <= dims:  # checked before NetVLAD changes
                raise ModelError(
                    f"RetrievalNet.init_from_images: whitening to {dims} dims needs more than {dims} images, "
                    f"got {count}"
                )
            self.netvlad.init_from_descriptors(
                torch.cat(local).flatten(0, 1), max_samples=max_locals, seed=seed
            )
            vlad = torch.cat([self.vlad(images.to(device)) for images in _images(batches)])
            self.whitening.init_from_descriptors(vlad)
        except BaseException:
            self.netvlad.load_state_dict(previous)
            raise
        finally:
            self.train(was_training)


def _images(batches: Iterable[Any]) -> Iterable[torch.Tensor]:
    for batch in batches:
        yield batch if isinstance(batch, torch.Tensor) else batch[0]


def build_retrieval_net(
    arch: str = "small",
    *,
    num_clusters: int | None = None,
    whitening_dim: int | None = None,
    **backbone_kwargs: Any,
) -> RetrievalNet:
    """``arch`` backbone (``small``, ``alexnet``, ``vgg16``) + NetVLAD + PCA whitening.

    Defaults: ``small`` K=16 -> 256-D; ``alexnet`` / ``vgg16`` K=64 -> 4096-D (AlexNet: 69.6 M parameters).
    ``backbone_kwargs`` go to the backbone (``widths``, ``batch_norm`` for ``small``).
    """
    if not isinstance(arch, str) or arch not in BACKBONES:
        raise ModelError(f"unknown retrieval architecture {arch!r}; expected one of {sorted(BACKBONES)}")
    for name, value in (("num_clusters", num_clusters), ("whitening_dim", whitening_dim)):
        if value is not None and not is_integer(value):  # the range is checked by NetVLAD / PCAWhitening
            raise ModelError(f"{name} must be a positive integer, got {value!r}")
    accepted = [p for p in inspect.signature(BACKBONES[arch]).parameters if p != "self"]
    unknown = sorted(set(backbone_kwargs) - set(accepted))
    if unknown:
        raise ModelError(f"the {arch!r} backbone takes {accepted or 'no arguments'}, not {unknown}")
    if "widths" in backbone_kwargs:
        widths = backbone_kwargs["widths"]
        if (
            isinstance(widths, (str, bytes))
            or not isinstance(widths, Sequence)
            or not widths
            or not all(is_integer(w) and w >= 1 for w in widths)
        ):
            raise ModelError(f"widths must be a non-empty sequence of positive integers, got {widths!r}")
        backbone_kwargs = {**backbone_kwargs, "widths": tuple(int(w) for w in widths)}
    if not isinstance(backbone_kwargs.get("batch_norm", True), bool):
        raise ModelError(f"batch_norm must be a bool, got {backbone_kwargs['batch_norm']!r}")
    defaults = ARCH_DEFAULTS[arch]
    backbone = BACKBONES[arch](**backbone_kwargs)
    clusters = defaults["num_clusters"] if num_clusters is None else int(num_clusters)
    netvlad = NetVLAD(clusters, backbone.out_channels)
    dim = defaults["whitening_dim"] if whitening_dim is None else int(whitening_dim)
    whitening = PCAWhitening(netvlad.out_features, dim)
    return RetrievalNet(backbone, netvlad, whitening)
