"""Revisited Oxford / Paris retrieval metrics (Radenovic et al., CVPR 2018): mAP and mP@k.

The functional part works on plain tensors (or numpy arrays), so descriptors from any model, an exported
OpenVINO one included, are scored the same way. ``RevisitedMAP`` is a thin torchmetrics ``Metric`` over it
that gathers descriptors with their image indices (``dist_reduce_fx="cat"``), so DDP padding duplicates are
harmless.

AP is the trapezoidal AP of the reference ``compute_ap`` (revisitop ``python/evaluate.py``) over the ranking
with junk images removed; mP@k is the reference's precision at ``min(k, rank of the last positive)``.
Queries without positives are excluded from the means (NaN per query). Ties in similarity are broken against
the query (non-positives first), so a collapsed network scores its worst case, never an artefact of the
database order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

PROTOCOLS = ("easy", "medium", "hard", "original")
"""``easy``/``medium``/``hard``: revisited protocols over ``easy``/``hard``/``junk`` lists;
``original``: the Oxford5k / Paris6k protocol over ``good`` + ``ok`` (positives) and ``junk``."""

DEFAULT_KS = (1, 5, 10)


def index_array(values: Any, where: str) -> np.ndarray:
    """A flat int64 array of image indices; floats must be whole numbers (never silently truncated).
    Raises ``ValueError`` naming ``where``."""
    try:
        arr = np.asarray(values).reshape(-1)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where} is not a list of image indices ({e})") from e
    whole = arr.dtype.kind == "f" and bool(np.isfinite(arr).all()) and bool((arr == np.round(arr)).all())
    if arr.size and arr.dtype.kind not in "iu" and not whole:
        raise ValueError(f"{where} must hold integer image indices, got {arr[:5].tolist()}")
    return arr.astype(np.int64)


def _whole(k: Any) -> bool:
    """An integer (a bool is not), or a finite float with an integral value."""
    if isinstance(k, (bool, np.bool_)):
        return False
    if isinstance(k, (int, np.integer)):
        return True
    return isinstance(k, (float, np.floating)) and math.isfinite(k) and float(k).is_integer()


def _indices(entry: Mapping[str, Any], key: str, query: int) -> torch.Tensor:
    if key not in entry:
        raise ValueError(f"gnd[{query}] has no {key!r} list (keys: {sorted(entry)})")
    return torch.as_tensor(index_array(entry[key], f"gnd[{query}][{key!r}]"))


def _check_gnd(gnd: Sequence[Mapping[str, Any]]) -> None:
    if isinstance(gnd, (str, bytes, Mapping)) or not isinstance(gnd, Sequence):
        raise ValueError(f"gnd must be a list of per-query dicts, got {type(gnd).__name__}")
    bad = next((q for q, entry in enumerate(gnd) if not isinstance(entry, Mapping)), None)
    if bad is not None:
        raise ValueError(f"gnd[{bad}] must be a dict, got {type(gnd[bad]).__name__}")


def default_protocols(gnd: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """``("original",)`` for Oxford5k / Paris6k ground truth (``ok`` lists, no ``easy``), else the revisited
    ``("easy", "medium", "hard")``."""
    _check_gnd(gnd)
    original = bool(gnd) and all("ok" in entry and "easy" not in entry for entry in gnd)
    return ("original",) if original else ("easy", "medium", "hard")


def _check_protocols(protocols: Sequence[str]) -> tuple[str, ...]:
    if isinstance(protocols, str):
        raise ValueError(f"protocols must be a sequence of names such as ({protocols!r},), not a string")
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad or not protocols:
        raise ValueError(f"unknown protocols {bad or list(protocols)}; expected some of {PROTOCOLS}")
    return tuple(protocols)


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    values = list(ks) if isinstance(ks, Iterable) and not isinstance(ks, (str, bytes, Mapping)) else []
    if not values or not all(_whole(k) and k >= 1 for k in values):
        raise ValueError(f"ks must be a sequence of positive integers, got {ks!r}")
    return tuple(int(k) for k in values)


def ground_truth_masks(
    gnd: Sequence[Mapping[str, Any]], num_database: int, protocol: str = "medium"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean ``(positives, junk)`` masks of shape ``(queries, num_database)`` for ``protocol``.

    Easy: positives = easy, junk = junk + hard. Medium: positives = easy + hard, junk = junk. Hard:
    positives = hard, junk = junk + easy. Original: positives = good + ok, junk = junk. An index that is both
    positive and junk counts as positive.
    """
    keys = {
        "easy": (("easy",), ("junk", "hard")),
        "medium": (("easy", "hard"), ("junk",)),
        "hard": (("hard",), ("junk", "easy")),
        "original": (("good", "ok"), ("junk",)),
    }
    if not isinstance(protocol, str) or protocol not in keys:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    if isinstance(num_database, (bool, np.bool_)) or not isinstance(num_database, (int, np.integer)):
        raise ValueError(f"num_database must be an integer, got {num_database!r}")
    if num_database < 0:
        raise ValueError(f"num_database must be >= 0, got {num_database}")
    _check_gnd(gnd)
    pos_keys, junk_keys = keys[protocol]
    positives = torch.zeros(len(gnd), num_database, dtype=torch.bool)
    junk = torch.zeros_like(positives)
    for q, entry in enumerate(gnd):
        for mask, names in ((positives, pos_keys), (junk, junk_keys)):
            for name in names:
                if protocol == "original" and name == "good" and name not in entry:
                    continue  # cirtorch's gnd_oxford5k.pkl stores good + ok merged under "ok"
                idx = _indices(entry, name, q)
                bad = idx[(idx < 0) | (idx >= num_database)]
                if bad.numel():
                    raise ValueError(
                        f"gnd[{q}][{name!r}] has index {int(bad[0])} outside the database of "
                        f"{num_database} images"
                    )
                mask[q, idx] = True
    return positives, junk & ~positives


def _as_tensor(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    if not torch.is_floating_point(t):
        t = t.float()
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (images, dims), got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return t.detach().float()


def _sorted_ranks(
    similarity: torch.Tensor, positives: torch.Tensor, junk: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sorted position: 0-based rank among non-junk images, and whether it is a (non-junk) positive."""
    if similarity.shape != positives.shape or similarity.shape != junk.shape:
        raise ValueError(
            f"similarity {tuple(similarity.shape)}, positives {tuple(positives.shape)} and junk "
            f"{tuple(junk.shape)} must have the same (queries, database) shape"
        )
    positives = positives.to(similarity.device)
    junk = junk.to(similarity.device)
    # two stable sorts: non-positives before positives, then by descending similarity (ties stay pessimistic)
    order = torch.argsort(positives.to(torch.int8), dim=1, stable=True)
    by_score = torch.sort(similarity.gather(1, order), dim=1, descending=True, stable=True).indices
    order = order.gather(1, by_score)
    keep = ~junk.gather(1, order)
    rank = keep.long().cumsum(1) - 1
    is_pos = positives.gather(1, order) & keep
    return rank, is_pos


def average_precision(similarity: torch.Tensor, positives: torch.Tensor, junk: torch.Tensor) -> torch.Tensor:
    """Reference (trapezoidal) AP per query, junk removed from the ranking; NaN for queries without positives.

    ``similarity``: ``(queries, database)`` scores, higher is closer; ``positives`` / ``junk``: boolean masks.
    """
    rank, is_pos = _sorted_ranks(similarity, positives, junk)
    j = (is_pos.long().cumsum(1) - 1).double()
    r = rank.double()
    precision_0 = torch.where(rank == 0, torch.ones_like(r), j / r.clamp(min=1))
    precision_1 = (j + 1) / (r + 1)
    num_pos = positives.sum(1).to(similarity.device).double()
    # junk ranked above every non-junk image has rank -1 (0/0 above): select positives, never multiply
    ap = torch.where(is_pos, precision_0 + precision_1, torch.zeros_like(r)).sum(1) / (2 * num_pos)
    return torch.where(num_pos > 0, ap, torch.full_like(ap, float("nan")))


def precision_at_k(
    similarity: torch.Tensor, positives: torch.Tensor, junk: torch.Tensor, ks: Sequence[int] = DEFAULT_KS
) -> torch.Tensor:
    """Reference mP@k per query, ``(queries, len(ks))``: precision at ``min(k, last positive's rank)``."""
    ks = _check_ks(ks)
    rank, is_pos = _sorted_ranks(similarity, positives, junk)
    rank1 = torch.where(is_pos, rank + 1, torch.zeros_like(rank))  # 1-based ranks of positives, 0 elsewhere
    last = rank1.max(1).values  # rank of the last positive (0: no positive)
    kq = torch.minimum(last[:, None], torch.as_tensor(list(ks), device=rank.device)[None])  # (Q, K)
    hits = (is_pos[:, :, None] & (rank1[:, :, None] <= kq[:, None, :])).sum(1)
    prec = hits.double() / kq.clamp(min=1).double()
    no_pos = positives.sum(1).to(rank.device) == 0
    return torch.where(no_pos[:, None], torch.full_like(prec, float("nan")), prec)


def cosine_similarity(
    queries: torch.Tensor | np.ndarray, database: torch.Tensor | np.ndarray
) -> torch.Tensor:
    """``(queries, database)`` cosine similarities of two descriptor matrices (L2-normalised here)."""
    q = _as_tensor(queries, "query descriptors")
    db = _as_tensor(database, "database descriptors")
    if q.shape[1] != db.shape[1]:
        raise ValueError(f"query descriptors have {q.shape[1]} dims, database descriptors {db.shape[1]}")
    q = torch.nn.functional.normalize(q, dim=1)
    db = torch.nn.functional.normalize(db.to(q.device), dim=1)
    return q @ db.T


def revisited_map(
    query_descriptors: torch.Tensor | np.ndarray,
    database_descriptors: torch.Tensor | np.ndarray,
    gnd: Sequence[Mapping[str, Any]],
    protocols: Sequence[str] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, torch.Tensor]:
    """mAP and mP@k per protocol: keys ``mAP_<protocol>`` and ``mP@<k>_<protocol>`` (0-d float tensors).

    Row ``i`` of ``query_descriptors`` is the query ``gnd[i]``; database rows are the indices used in ``gnd``.
    A protocol where no query has positives gives NaN. ``protocols`` defaults to :func:`default_protocols`.
    """
    _check_gnd(gnd)
    protocols = default_protocols(gnd) if protocols is None else _check_protocols(protocols)
    ks = _check_ks(ks)
    if len(gnd) != len(query_descriptors):
        raise ValueError(
            f"gnd has {len(gnd)} queries but {len(query_descriptors)} query descriptors were given"
        )
    similarity = cosine_similarity(query_descriptors, database_descriptors)
    out: dict[str, torch.Tensor] = {}
    for protocol in protocols:
        positives, junk = ground_truth_masks(gnd, similarity.shape[1], protocol)
        out[f"mAP_{protocol}"] = average_precision(similarity, positives, junk).nanmean().float()
        prec = precision_at_k(similarity, positives, junk, ks).nanmean(0).float()
        out.update({f"mP@{k}_{protocol}": prec[i] for i, k in enumerate(ks)})
    return out


class RevisitedMAP(Metric):
    """Revisited Oxford/Paris mAP and mP@k over descriptors gathered batch by batch (DDP-safe).

    ``update(descriptors, indices, is_query)``: ``indices`` are positions in ``qimlist`` (queries) or
    ``imlist`` (database); ``is_query`` is a bool or a per-row bool tensor. ``compute()`` returns
    :func:`revisited_map`'s dict and raises if an image was never seen. ``protocols`` defaults to
    :func:`default_protocols` of ``gnd`` (the revisited three, or ``original`` for Oxford5k / Paris6k).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    query_desc: list[torch.Tensor]
    query_idx: list[torch.Tensor]
    db_desc: list[torch.Tensor]
    db_idx: list[torch.Tensor]

    def __init__(
        self,
        gnd: Sequence[Mapping[str, Any]],
        num_database: int,
        protocols: Sequence[str] | None = None,
        ks: Sequence[int] = DEFAULT_KS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # validate the ground truth, protocols and ks now, not at the end of an epoch
        self.protocols = default_protocols(gnd) if protocols is None else _check_protocols(protocols)
        self.ks = _check_ks(ks)
        for protocol in self.protocols:
            ground_truth_masks(gnd, num_database, protocol)
        self.gnd = list(gnd)
        self.num_database = num_database
        for name in ("query_desc", "query_idx", "db_desc", "db_idx"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        descriptors: torch.Tensor | np.ndarray,
        indices: torch.Tensor | np.ndarray,
        is_query: bool | torch.Tensor | np.ndarray,
    ) -> None:
        """Record a batch of descriptors with their query / database indices."""
        desc = _as_tensor(descriptors, "descriptors").to(self.device)
        dims = self._recorded_dims()
        if dims is not None and desc.shape[1] != dims:
            raise ValueError(f"descriptors have {desc.shape[1]} dims, earlier batches had {dims}")
        raw = indices.detach().cpu().numpy() if isinstance(indices, torch.Tensor) else indices
        idx = torch.from_numpy(index_array(raw, "indices")).to(self.device)
        if idx.numel() != desc.shape[0]:
            raise ValueError(f"{desc.shape[0]} descriptors but {idx.numel()} indices")
        flags_np = np.asarray(is_query.detach().cpu() if isinstance(is_query, torch.Tensor) else is_query)
        if flags_np.dtype.kind != "b" and not (
            flags_np.dtype.kind in "iu" and np.isin(flags_np, (0, 1)).all()
        ):
            raise ValueError(f"is_query must be a bool or per-row bools, got {is_query!r:.60}")
        flags = torch.from_numpy(flags_np.astype(bool).reshape(-1)).to(self.device)
        flags = flags.expand(idx.numel()) if flags.numel() == 1 else flags
        if flags.numel() != idx.numel():
            raise ValueError(f"is_query has {flags.numel()} entries for {idx.numel()} descriptors")
        self.query_desc.append(desc[flags])
        self.query_idx.append(idx[flags])
        self.db_desc.append(desc[~flags])
        self.db_idx.append(idx[~flags])

    def _recorded_dims(self) -> int | None:
        """Descriptor dims of the batches recorded so far (None before the first)."""
        for state in (self.query_desc, self.db_desc):
            if isinstance(state, torch.Tensor):
                return int(state.shape[1]) if state.ndim == 2 else None
            if state:
                return int(state[0].shape[1])
        return None

    @staticmethod
    def _assemble(
        desc: list[torch.Tensor] | torch.Tensor, idx: list[torch.Tensor] | torch.Tensor, n: int, what: str
    ) -> torch.Tensor:
        if isinstance(desc, list) and not desc:
            raise ValueError(f"no {what} descriptors were recorded (call update first)")
        d, i = dim_zero_cat(desc), dim_zero_cat(idx)
        bad = i[(i < 0) | (i >= n)]
        if bad.numel():
            raise ValueError(f"{what} index {int(bad[0])} outside 0..{n - 1}")
        seen = torch.zeros(n, dtype=torch.bool, device=i.device)
        seen[i] = True
        if not bool(seen.all()):
            missing = (~seen).nonzero().flatten()
            raise ValueError(
                f"{len(missing)} of {n} {what} images never updated (first: {missing[:5].tolist()})"
            )
        full = torch.empty(n, d.shape[1], dtype=d.dtype, device=d.device)
        full[i] = d  # DDP sampler padding repeats images; duplicates write identical rows
        return full

    def compute(self) -> dict[str, torch.Tensor]:
        """mAP / mP@k per protocol over everything gathered so far."""
        queries = self._assemble(self.query_desc, self.query_idx, len(self.gnd), "query")
        database = self._assemble(self.db_desc, self.db_idx, self.num_database, "database")
        return revisited_map(queries, database, self.gnd, self.protocols, self.ks)
