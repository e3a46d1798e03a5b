"""Triplet loss values and vectorised hard-negative mining."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.retrieval.losses import TripletLoss, triplet_loss
from lightning_modules.retrieval.mining import mine_tuples
from nncf_ext.errors import ModelError


def test_triplet_loss_by_hand() -> None:
    a = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[0.6, 0.8]])  # ||a - p||^2 = 0.8
    n = torch.tensor([[[0.0, 1.0], [-1.0, 0.0]]])  # ||a - n||^2 = 2 and 4
    # 1/2 h(m + 0.8 - 2) + 1/2 h(m + 0.8 - 4): only the first is active with m = 1.5
    assert triplet_loss(a, p, n, margin=1.5).item() == pytest.approx(0.5 * 0.3)
    assert triplet_loss(a, p, n, margin=0.1).item() == 0.0
    stacked = torch.cat([a[:, None], p[:, None], n], 1)
    assert TripletLoss(1.5)(stacked).item() == pytest.approx(0.15)
    with pytest.raises(ModelError, match="must be"):
        triplet_loss(a, p, n[..., :1])


def test_shared_masked_negatives_equal_per_anchor_negatives() -> None:
    g = torch.Generator().manual_seed(0)
    a, p, pool = (torch.nn.functional.normalize(torch.randn(s, 5, generator=g), dim=1) for s in (3, 3, 6))
    mask = torch.tensor([[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1]], dtype=torch.bool)
    per_anchor = pool.view(3, 2, 5)  # anchor i's negatives are pool rows 2i, 2i + 1
    expected = triplet_loss(a, p, per_anchor, margin=1.0)
    assert expected > 0
    assert triplet_loss(a, p, pool, margin=1.0, mask=mask).item() == pytest.approx(expected.item(), rel=1e-5)
    assert triplet_loss(a, p, pool, margin=1.0).item() > expected.item()  # unmasked: more active negatives


def pool(n: int = 12, dim: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)


def masks(n: int = 12) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairs (0, 1), (2, 3), ... are places; image 11 is junk for the first place."""
    anchors = torch.arange(0, 10)
    positives = torch.zeros(10, n, dtype=torch.bool)
    positives[anchors, anchors ^ 1] = True
    forbidden = positives.clone()
    forbidden[anchors, anchors] = True
    forbidden[:2, 11] = True
    return anchors, positives, forbidden


def test_hardest_mining_picks_the_most_similar_allowed_images() -> None:
    desc = pool()
    anchors, positives, forbidden = masks()
    tuples = mine_tuples(
        desc, anchors, positives, forbidden, num_negatives=2, candidates=2, strategy="hardest"
    )
    assert tuples.shape == (10, 4)
    assert torch.equal(tuples[:, 0], anchors) and torch.equal(tuples[:, 1], anchors ^ 1)
    sim = (desc[anchors] @ desc.T).masked_fill(forbidden, -2)
    expected = sim.topk(2, dim=1).indices.sort(1).values
    assert torch.equal(tuples[:, 2:].sort(1).values, expected)


def test_negatives_are_drawn_among_the_candidates_hardest() -> None:
    """With ``candidates`` > ``num_negatives``, the picks vary over the ``candidates`` hardest, not beyond."""
    desc = pool()
    anchors, positives, forbidden = masks()
    sim = (desc[anchors] @ desc.T).masked_fill(forbidden, -2)
    top4 = sim.topk(4, dim=1).indices
    seen = torch.zeros_like(forbidden)
    for seed in range(12):
        tuples = mine_tuples(
            desc, anchors, positives, forbidden, num_negatives=2, candidates=4, strategy="hardest",
            generator=torch.Generator().manual_seed(seed),
        )  # fmt: skip
        assert all(set(row[2:].tolist()) <= set(top.tolist()) for row, top in zip(tuples, top4, strict=True))
        seen[torch.arange(len(anchors))[:, None], tuples[:, 2:]] = True
    assert bool((seen.sum(1) > 2).all())  # more than the two hardest were drawn for every anchor


def test_semi_hard_mining_prefers_negatives_farther_than_the_positive() -> None:
    desc = pool(seed=3)
    anchors, positives, forbidden = masks()
    tuples = mine_tuples(
        desc, anchors, positives, forbidden, num_negatives=1, candidates=1, strategy="semi-hard"
    )
    sim = desc[anchors] @ desc.T
    s_pos = sim.gather(1, tuples[:, 1:2]).squeeze(1)
    for row in range(10):
        allowed = ~forbidden[row]
        farther = allowed & (sim[row] < s_pos[row])
        neg = int(tuples[row, 2])
        assert allowed[neg]
        if farther.any():  # the most similar of the negatives that are farther than the positive
            assert neg == torch.where(farther, sim[row], torch.tensor(-9.0)).argmax().item()


def test_mining_is_deterministic_per_generator_and_never_forbidden() -> None:
    desc = pool()
    anchors, positives, forbidden = masks()
    run = [
        mine_tuples(
            desc, anchors, positives, forbidden, 3, candidates=6, generator=torch.Generator().manual_seed(s)
        )
        for s in (7, 7, 8)
    ]
    assert torch.equal(run[0], run[1]) and not torch.equal(run[0], run[2])
    for t in run:
        rows = torch.arange(10)[:, None]
        assert not forbidden[rows, t[:, 2:]].any()
        assert all(len(set(r[2:].tolist())) == 3 for r in t)  # distinct negatives
    subset = mine_tuples(desc, anchors, positives, forbidden, 3, max_tuples=4)
    assert subset.shape == (4, 5) and set(subset[:, 0].tolist()) <= set(anchors.tolist())
    with pytest.raises(ModelError, match="strategy"):
        mine_tuples(desc, anchors, positives, forbidden, 3, strategy="easy")


def test_the_anchor_and_its_positives_are_never_negatives() -> None:
    """Whatever ``forbidden`` holds: mine_tuples is public, and a caller may pass only the junk."""
    desc = pool()
    anchors, positives, _ = masks()
    nothing = torch.zeros_like(positives)
    for strategy in ("hardest", "semi-hard"):
        tuples = mine_tuples(desc, anchors, positives, nothing, 8, candidates=8, strategy=strategy)
        rows = torch.arange(10)[:, None]
        assert not positives[rows, tuples[:, 2:]].any()
        assert not (tuples[:, 2:] == tuples[:, :1]).any()
    assert not nothing.any()  # the caller's mask is left alone


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"num_negatives": 0}, "num_negatives"), ({"max_tuples": 0}, "max_tuples")]
)
def test_mining_counts_are_checked(kwargs: dict, message: str) -> None:
    anchors, positives, forbidden = masks()
    with pytest.raises(ModelError, match=message):
        mine_tuples(pool(), anchors, positives, forbidden, **{"num_negatives": 2, **kwargs})


def test_triplet_loss_shapes_and_margin_are_checked() -> None:
    with pytest.raises(ModelError, match="must be"):
        triplet_loss(torch.randn(4), torch.randn(4), torch.randn(2, 4))  # 1-D anchor: was an IndexError
    with pytest.raises(ModelError, match=r"\(B, 2 \+ n, D\)"):
        TripletLoss()(torch.randn(4, 6))
    with pytest.raises(ModelError, match="margin"):
        TripletLoss(float("nan"))
    with pytest.raises(ModelError, match="margin"):
        TripletLoss(-0.1)
    assert TripletLoss(0.0).margin == 0.0  # a zero margin is allowed
