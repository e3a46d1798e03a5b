"""Hard-negative mining from a descriptor cache, vectorised over all anchors at once."""

from __future__ import annotations

import torch

from nncf_ext.errors import ModelError


def mine_tuples(
    descriptors: torch.Tensor,
    anchors: torch.Tensor,
    positives: torch.Tensor,
    forbidden: torch.Tensor,
    num_negatives: int,
    candidates: int = 10,
    max_tuples: int | None = None,
    strategy: str = "semi-hard",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``(A', 2 + num_negatives)`` pool indices: anchor, a random positive, hard negatives.

    ``descriptors``: ``(P, D)`` unit-norm cache of the whole pool; ``anchors``: ``(A,)`` pool indices;
    ``positives`` / ``forbidden``: ``(A, P)`` masks (forbidden: never a negative; the anchor and its positives
    are never negatives whatever the mask says).
    The negatives are ``num_negatives`` distinct random picks among each anchor's ``candidates`` hardest:
    ``hardest``: the most similar allowed images (NetVLAD / cirtorch, for pretrained backbones);
    ``semi-hard`` (FaceNet): the most similar among those farther than the positive, topped up with random
    negatives; it avoids the collapse that hardest negatives cause when a backbone starts from scratch.
    ``max_tuples`` keeps a random subset of anchors. Deterministic for a given ``generator`` state, so every
    DDP rank mines the same tuples.
    """
    if strategy not in ("semi-hard", "hardest"):
        raise ModelError(f"mine_tuples: strategy must be 'semi-hard' or 'hardest', got {strategy!r}")
    num_anchors, pool = positives.shape
    if descriptors.shape[0] != pool or forbidden.shape != positives.shape or anchors.shape != (num_anchors,):
        raise ModelError(
            f"mine_tuples: descriptors {tuple(descriptors.shape)}, anchors {tuple(anchors.shape)}, positives "
            f"{tuple(positives.shape)} and forbidden {tuple(forbidden.shape)} disagree"
        )
    if num_negatives < 1 or (max_tuples is not None and max_tuples < 1):
        raise ModelError(
            f"mine_tuples: num_negatives and max_tuples must be >= 1, got {num_negatives} and {max_tuples}"
        )
    forbidden = forbidden | positives
    forbidden[torch.arange(num_anchors), anchors] = True
    allowed = (~forbidden).sum(1)
    if bool((positives.sum(1) == 0).any()) or int(allowed.min()) < num_negatives:
        raise ModelError(
            "mine_tuples: every anchor needs a positive and at least num_negatives allowed negatives"
        )
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    rows = torch.arange(num_anchors)
    if max_tuples is not None and max_tuples < num_anchors:
        rows = torch.randperm(num_anchors, generator=g)[:max_tuples].sort().values
    desc = descriptors.detach().float().cpu()
    anchors, positives, forbidden = anchors[rows].cpu(), positives[rows].cpu(), forbidden[rows].cpu()
    positive = torch.multinomial(positives.float(), 1, generator=g)
    similarity = desc[anchors] @ desc.T  # (A', P), in [-1, 1]
    if strategy == "semi-hard":  # farther than the positive ranks first (2 + sim > 1), then random (< 1)
        farther = similarity < similarity.gather(1, positive)
        similarity = torch.where(farther, 2 + similarity, torch.rand(similarity.shape, generator=g))
    similarity = similarity.masked_fill(forbidden, float("-inf"))
    c = max(num_negatives, min(candidates, int(allowed.min())))
    hardest = similarity.topk(c, dim=1).indices  # (A', c)
    pick = torch.rand(hardest.shape, generator=g).argsort(1)[:, :num_negatives]
    negatives = hardest.gather(1, pick)
    return torch.cat([anchors[:, None], positive, negatives], 1)
