"""Revisited Oxford/Paris mAP and mP@k against hand-computed values and a loop port of the reference."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_modules.metrics.retrieval import (
    RevisitedMAP,
    average_precision,
    default_protocols,
    ground_truth_masks,
    precision_at_k,
    revisited_map,
)


def reference_map(
    ranks: np.ndarray, gnd: list[dict], kappas: list[int]
) -> tuple[float, np.ndarray, np.ndarray]:
    """A line-by-line port of revisitop's ``compute_map`` (``python/evaluate.py``); ranks is (db, queries)."""
    m, nq, nempty = 0.0, len(gnd), 0
    aps, prs = np.zeros(nq), np.zeros((nq, len(kappas)))
    for i in range(nq):
        qgnd, qgndj = np.array(gnd[i]["ok"]), np.array(gnd[i]["junk"])
        if qgnd.shape[0] == 0:
            aps[i], prs[i] = float("nan"), float("nan")
            nempty += 1
            continue
        pos = np.arange(ranks.shape[0])[np.isin(ranks[:, i], qgnd)]
        junk = np.arange(ranks.shape[0])[np.isin(ranks[:, i], qgndj)]
        k, ij = 0, 0
        if len(junk):
            ip = 0
            while ip < len(pos):
                while ij < len(junk) and pos[ip] > junk[ij]:
                    k, ij = k + 1, ij + 1
                pos[ip] -= k
                ip += 1
        ap = 0.0
        for j, rank in enumerate(pos):
            precision_0 = 1.0 if rank == 0 else j / rank
            ap += (precision_0 + (j + 1) / (rank + 1)) / len(qgnd) / 2
        aps[i], m = ap, m + ap
        pos = pos + 1
        for j, kappa in enumerate(kappas):
            kq = min(max(pos), kappa)
            prs[i, j] = (pos <= kq).sum() / kq
    return m / (nq - nempty), aps, prs


def one_query(scores: list[float], positives: list[int], junk: list[int]) -> tuple[torch.Tensor, ...]:
    n = len(scores)
    pos, jnk = torch.zeros(1, n, dtype=torch.bool), torch.zeros(1, n, dtype=torch.bool)
    pos[0, positives], jnk[0, junk] = True, True
    return torch.tensor([scores]), pos, jnk


def test_ap_by_hand_with_junk_removed() -> None:
    # ranking 0..5; positives 0, 2, 5; junk 1 -> non-junk ranks of positives 0, 1, 4
    sim, pos, junk = one_query([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [0, 2, 5], [1])
    expected = ((1 + 1) + (1 + 1) + (2 / 4 + 3 / 5)) / 2 / 3
    assert average_precision(sim, pos, junk).item() == pytest.approx(expected)
    # junk counted as a negative would give ranks 0, 2, 5 instead
    with_junk = ((1 + 1) + (1 / 2 + 2 / 3) + (2 / 5 + 3 / 6)) / 2 / 3
    assert average_precision(sim, pos, torch.zeros_like(junk)).item() == pytest.approx(with_junk)


def test_junk_ranked_first_is_skipped() -> None:
    # junk at ranks 0 and 1 (no non-junk image above them), the positive next: non-junk rank 0, AP 1
    sim, pos, junk = one_query([0.9, 0.8, 0.7, 0.6], [2], [0, 1])
    assert average_precision(sim, pos, junk).item() == pytest.approx(1.0)
    # and such a query still counts in the mean: APs 1/6 (positive last of 3 non-junk) and 1
    q, db = torch.eye(2, 3), torch.tensor([[1, 0, 0], [0.9, 0.1, 0], [0.1, 0.9, 0], [0, 0, 1.0]])
    gnd = [{"easy": [3], "hard": [], "junk": [0]}, {"easy": [2], "hard": [], "junk": []}]
    assert revisited_map(q, db, gnd, protocols=("medium",))["mAP_medium"].item() == pytest.approx(7 / 12)


def test_precision_at_k_caps_k_at_last_positive_like_the_reference() -> None:
    sim, pos, junk = one_query([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [0, 2, 5], [1])
    # 1-based non-junk ranks of positives: 1, 2, 5; P@10 uses k = min(10, 5)
    assert precision_at_k(sim, pos, junk, (1, 2, 5, 10))[0].tolist() == pytest.approx(
        [1.0, 1.0, 3 / 5, 3 / 5]
    )


def test_ties_are_broken_against_the_query() -> None:
    sim, pos, junk = one_query([0.5, 0.5, 0.5, 0.5], [0], [])
    # the positive sorts after the three tied negatives: rank 3, AP = (0/3 + 1/4) / 2
    assert average_precision(sim, pos, junk).item() == pytest.approx(0.125)
    assert precision_at_k(sim, pos, junk, (1, 5))[0].tolist() == pytest.approx([0.0, 0.25])  # k=5 capped at 4
    # ties among positives only do not matter
    sim, pos, junk = one_query([0.5, 0.5, 0.1], [0, 1], [])
    assert average_precision(sim, pos, junk).item() == pytest.approx(1.0)


def test_queries_without_positives_are_excluded_from_the_mean() -> None:
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    db = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    gnd = [
        {"easy": [1], "hard": [], "junk": []},  # the positive is ranked last of 3: AP = (0/2 + 1/3) / 2
        {"easy": [], "hard": [], "junk": [0]},  # no positive under any protocol
    ]
    out = revisited_map(q, db, gnd, protocols=("medium",))
    assert out["mAP_medium"].item() == pytest.approx(1 / 6)
    assert out["mP@1_medium"].item() == pytest.approx(0.0)
    assert out["mP@5_medium"].item() == pytest.approx(1 / 3)  # k capped at the positive's rank 3


def test_protocol_masks() -> None:
    gnd = [{"easy": [0, 1], "hard": [2], "junk": [3]}]
    cases = {"easy": ([0, 1], [2, 3]), "medium": ([0, 1, 2], [3]), "hard": ([2], [0, 1, 3])}
    for protocol, (pos, junk) in cases.items():
        p, j = ground_truth_masks(gnd, 5, protocol)
        assert p[0].nonzero().flatten().tolist() == pos, protocol
        assert j[0].nonzero().flatten().tolist() == junk, protocol
    p, j = ground_truth_masks([{"good": [0], "ok": [4], "junk": [1]}], 5, "original")
    assert p[0].nonzero().flatten().tolist() == [0, 4] and j[0].nonzero().flatten().tolist() == [1]
    # an index listed as both positive and junk counts as positive only
    p, j = ground_truth_masks([{"easy": [0, 1], "hard": [], "junk": [1, 3]}], 5, "medium")
    assert p[0].nonzero().flatten().tolist() == [0, 1] and j[0].nonzero().flatten().tolist() == [3]


def test_default_protocols_read_the_ground_truth_format() -> None:
    original = {"good": [0], "ok": [1], "junk": []}
    revisited = {"easy": [0], "hard": [1], "junk": []}
    assert default_protocols([original, original]) == ("original",)
    assert default_protocols([revisited]) == ("easy", "medium", "hard")
    assert default_protocols([original, revisited]) == ("easy", "medium", "hard")  # original only if all are
    assert default_protocols([]) == ("easy", "medium", "hard")


def test_matches_reference_loops_on_random_data() -> None:
    g = torch.Generator().manual_seed(0)
    nq, ndb, dim = 40, 30, 8
    q, db = torch.randn(nq, dim, generator=g), torch.randn(ndb, dim, generator=g)
    gnd = []
    for _ in range(nq):
        perm = torch.randperm(ndb, generator=g).tolist()
        a, b, c = (int(v) for v in torch.randint(0, 8, (3,), generator=g))
        gnd.append({"easy": perm[:a], "hard": perm[a : a + b], "junk": perm[a + b : a + b + c]})
    gnd[3] = {"easy": [], "hard": [], "junk": [1, 2]}  # no positives at all
    ours = revisited_map(q, db, gnd, protocols=("easy", "medium", "hard"), ks=(1, 5, 10))
    sim = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(db, dim=1).T
    ranks = torch.argsort(-sim, dim=1).T.numpy()  # (db, queries); random scores have no ties
    for protocol, ok, junk in (
        ("easy", ("easy",), ("junk", "hard")),
        ("medium", ("easy", "hard"), ("junk",)),
        ("hard", ("hard",), ("junk", "easy")),
    ):
        ref_gnd = [
            {"ok": [i for k in ok for i in e[k]], "junk": [i for k in junk for i in e[k]]} for e in gnd
        ]
        m, _, prs = reference_map(ranks, ref_gnd, [1, 5, 10])
        assert ours[f"mAP_{protocol}"].item() == pytest.approx(m, abs=1e-6), protocol
        mp_k = np.nanmean(prs, axis=0)
        for i, k in enumerate((1, 5, 10)):
            assert ours[f"mP@{k}_{protocol}"].item() == pytest.approx(mp_k[i], abs=1e-6), (protocol, k)


def _data(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    g = torch.Generator().manual_seed(seed)
    q, db = torch.randn(6, 4, generator=g), torch.randn(20, 4, generator=g)
    gnd = [{"easy": [i, i + 6], "hard": [i + 12], "junk": [19]} for i in range(6)]
    return q, db, gnd


def test_metric_accumulates_batches_in_any_order_with_duplicates() -> None:
    q, db, gnd = _data()
    expected = revisited_map(q, db, gnd)
    metric = RevisitedMAP(gnd, num_database=20)
    images = torch.cat([q, db])
    indices = torch.cat([torch.arange(6), torch.arange(20)])
    is_query = torch.cat([torch.ones(6, dtype=torch.bool), torch.zeros(20, dtype=torch.bool)])
    order = torch.randperm(26, generator=torch.Generator().manual_seed(3))
    order = torch.cat([order, order[:4]])  # a DDP sampler pads by repeating samples
    for chunk in order.split(7):
        metric.update(images[chunk].numpy(), indices[chunk].numpy(), is_query[chunk])
    out = metric.compute()
    assert set(out) == set(expected)
    for key, value in expected.items():
        assert out[key].item() == pytest.approx(value.item()), key


def test_metric_refuses_partial_data_and_bad_ground_truth() -> None:
    q, db, gnd = _data()
    metric = RevisitedMAP(gnd, num_database=20)
    metric.update(q, torch.arange(6), True)
    metric.update(db[:10], torch.arange(10), False)
    with pytest.raises(ValueError, match="10 of 20 database images never updated"):
        metric.compute()
    with pytest.raises(ValueError, match=r"gnd\[0\]\['easy'\] has index 25"):
        RevisitedMAP([{"easy": [25], "hard": [], "junk": []}], num_database=20)
    with pytest.raises(ValueError, match="NaN"):
        metric.update(torch.full((1, 4), float("nan")), torch.tensor([0]), True)
    # arguments are checked when the metric is built, not at the end of an epoch
    with pytest.raises(ValueError, match="ks must be a sequence of positive integers"):
        RevisitedMAP(gnd, num_database=20, ks=(0,))
    with pytest.raises(ValueError, match="not a string"):
        RevisitedMAP(gnd, num_database=20, protocols="medium")
    with pytest.raises(ValueError, match=r"gnd\[0\]\['easy'\] must hold integer image indices"):
        RevisitedMAP([{"easy": [1.5], "hard": [], "junk": []}], num_database=20)  # never truncated to 1


def _ddp_worker(rank: int, world: int, port: int, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    q, db, gnd = _data()
    metric = RevisitedMAP(gnd, num_database=20)
    # DistributedSampler style: rank r takes every world-th sample, the last rank padded with a repeat
    idx_q, idx_db = list(range(rank, 6, world)), list(range(rank, 20, world)) + [0] * rank
    metric.update(q[idx_q], torch.tensor(idx_q), True)
    metric.update(db[idx_db], torch.tensor(idx_db), False)
    out[rank] = {k: v.item() for k, v in metric.compute().items()}
    dist.destroy_process_group()


def test_metric_gathers_across_ddp_processes() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_ddp_worker, args=(2, port, out), nprocs=2, join=True)
    q, db, gnd = _data()
    expected = {k: v.item() for k, v in revisited_map(q, db, gnd).items()}
    for rank in (0, 1):
        assert out[rank] == pytest.approx(expected)


def test_update_refuses_truncated_indices_odd_flags_and_changing_dims() -> None:
    """Float indices were truncated (0.7 -> 0); a dimension change failed only in compute() (torch.cat)."""
    q, db, gnd = _data()
    metric = RevisitedMAP(gnd, num_database=20)
    with pytest.raises(ValueError, match=r"indices must hold integer image indices, got \[0.7, 1.2\]"):
        metric.update(q[:2], [0.7, 1.2], True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="indices must hold integer image indices"):
        metric.update(q[:2], torch.tensor([0.5, 1.0]), True)
    for flag in ("yes", None, 2, torch.tensor([0.5, 1.0])):
        with pytest.raises(ValueError, match="is_query must be a bool or per-row bools"):
            metric.update(q[:2], [0, 1], flag)  # type: ignore[arg-type]
    assert not metric.query_desc and not metric.db_desc  # nothing recorded by a refused batch
    metric.update(q, [float(i) for i in range(6)], np.True_)  # type: ignore[arg-type]  # whole floats
    with pytest.raises(ValueError, match="descriptors have 5 dims, earlier batches had 4"):
        metric.update(torch.randn(20, 5), torch.arange(20), False)
    metric.update(db, torch.arange(20), torch.zeros(20, dtype=torch.int64))  # 0 / 1 integers are flags
    assert metric.compute()["mAP_medium"].item() == pytest.approx(
        revisited_map(q, db, gnd)["mAP_medium"].item()
    )


def test_ground_truth_helpers_name_bad_arguments() -> None:
    _, _, gnd = _data()
    with pytest.raises(ValueError, match=r"gnd\[2\] must be a dict, got NoneType"):
        RevisitedMAP([*gnd[:2], None], num_database=20)  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"gnd\[0\] must be a dict, got NoneType"):
        ground_truth_masks([None], 20)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="gnd must be a list of per-query dicts, got int"):
        default_protocols(5)  # type: ignore[arg-type]
    for ks in ([float("inf")], [float("nan")], ["5"], [True], "15", 5, [2.5]):
        with pytest.raises(ValueError, match="ks must be a sequence of positive integers"):
            RevisitedMAP(gnd, num_database=20, ks=ks)  # type: ignore[arg-type]
    assert RevisitedMAP(gnd, num_database=20, ks=[1, 5.0, np.int64(10)]).ks == (1, 5, 10)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="num_database must be >= 0, got -1"):
        ground_truth_masks(gnd, -1)
    for n in (2.5, True, "20"):
        with pytest.raises(ValueError, match="num_database must be an integer"):
            RevisitedMAP(gnd, num_database=n)  # type: ignore[arg-type]
