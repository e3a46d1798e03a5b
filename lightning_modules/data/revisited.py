"""Revisited Oxford / Paris format (Radenovic et al., CVPR 2018): loader, image datasets and training tuples.

A dataset directory holds ``jpg/<name>.jpg`` and ``gnd_<dataset>.pkl`` with ``imlist`` (database names),
``qimlist`` (query names) and ``gnd`` (per query: ``bbx`` [x1, y1, x2, y2], ``easy``, ``hard``, ``junk``
database indices). Queries are cropped to ``bbx``. Real ROxford5k / RParis6k directories load as they are;
so do the original Oxford5k / Paris6k ground truths of cirtorch (``ok``, ``junk``, optionally ``good``), which
the ``"original"`` protocol scores.
Images are resized to ``image_size`` x ``image_size`` and normalised with ImageNet statistics.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from lightning_modules.metrics.retrieval import index_array
from nncf_ext.config_reader import is_integer
from nncf_ext.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GND_KEYS = ("easy", "hard", "junk")  # the revisited format
ORIGINAL_KEYS = ("ok", "junk")  # the original Oxford5k / Paris6k format (plus "good" where it is kept apart)
INDEX_KEYS = ("easy", "hard", "junk", "good", "ok")


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as an ``int`` >= ``minimum`` (numpy integers too; a bool or a float is refused), else a
    DataError naming ``name``."""
    if not is_integer(value) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise DataError(f"{name} must be {what}, got {value!r}")
    return int(value)


def _names(value: Any, path: Path, key: str) -> list[str]:
    if isinstance(value, np.ndarray) and value.ndim == 1:  # a pickle written from numpy
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) and s for s in value):
        raise DataError(f"{path}: {key!r} must be a list of names, got {value!r:.60}")
    return list(value)


def positives_of(entry: dict[str, Any]) -> list[int]:
    """Database indices of a query's place: easy + hard (revisited), or good + ok (original)."""
    keys = ("easy", "hard") if "easy" in entry else ("good", "ok")
    return [i for k in keys for i in entry.get(k, [])]


@dataclass(frozen=True)
class RevisitedData:
    """One dataset in the revisited format: names, ground truth and where the images are."""

    root: Path
    name: str
    imlist: list[str]
    qimlist: list[str]
    gnd: list[dict[str, Any]]

    @property
    def num_database(self) -> int:
        return len(self.imlist)

    @property
    def num_queries(self) -> int:
        return len(self.qimlist)

    def image_path(self, name: str) -> Path:
        return self.root / "jpg" / f"{name}.jpg"


def load_revisited(root: str | Path, name: str | None = None) -> RevisitedData:
    """Read ``root/gnd_<name>.pkl`` (``name`` defaults to the only ``gnd_*.pkl`` there) and check it."""
    root = Path(root)
    if name is None:
        found = sorted(root.glob("gnd_*.pkl"))
        if len(found) != 1:
            raise DataError(
                f"{root}: expected exactly one gnd_<dataset>.pkl, found {[p.name for p in found]}"
            )
        name = found[0].stem[len("gnd_") :]
    path = root / f"gnd_{name}.pkl"
    if not path.is_file():
        raise DataError(f"{path}: ground-truth file not found")
    try:
        with open(path, "rb") as f:
            raw = pickle.load(f)
    except Exception as e:  # a truncated or foreign file
        raise DataError(f"{path}: cannot unpickle ({e})") from e
    if not isinstance(raw, dict) or any(k not in raw for k in ("imlist", "qimlist", "gnd")):
        raise DataError(f"{path}: expected a dict with 'imlist', 'qimlist' and 'gnd'")
    imlist, qimlist = _names(raw["imlist"], path, "imlist"), _names(raw["qimlist"], path, "qimlist")
    if isinstance(raw["gnd"], np.ndarray) and raw["gnd"].ndim == 1:
        raw["gnd"] = list(raw["gnd"])
    if not isinstance(raw["gnd"], (list, tuple)):
        raise DataError(f"{path}: 'gnd' must be a list of per-query dicts, got {raw['gnd']!r:.60}")
    if len(raw["gnd"]) != len(qimlist):
        raise DataError(f"{path}: {len(raw['gnd'])} gnd entries for {len(qimlist)} queries")
    gnd = []
    for q, entry in enumerate(raw["gnd"]):
        if not isinstance(entry, dict):
            raise DataError(f"{path}: gnd[{q}] must be a dict, got {type(entry).__name__}")
        required = ORIGINAL_KEYS if "ok" in entry and "easy" not in entry else GND_KEYS
        missing = [k for k in ("bbx", *required) if k not in entry]
        if missing:
            raise DataError(
                f"{path}: gnd[{q}] lacks {missing} "
                f"(revisited: {list(GND_KEYS)}; original: {list(ORIGINAL_KEYS)})"
            )
        try:
            bbx = np.asarray(entry["bbx"], dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as e:
            raise DataError(f"{path}: gnd[{q}]['bbx'] is not numeric ({e})") from e
        if bbx.size != 4 or not np.isfinite(bbx).all():
            raise DataError(f"{path}: gnd[{q}]['bbx'] must have 4 finite numbers [x1, y1, x2, y2]")
        # read_image's crop, before it clips to the image: empty here is empty in any image
        if round(bbx[2]) <= max(0, round(bbx[0])) or round(bbx[3]) <= max(0, round(bbx[1])):
            raise DataError(f"{path}: gnd[{q}]['bbx'] {bbx.tolist()} is empty (needs x2 > x1, y2 > y1)")
        clean: dict[str, Any] = {"bbx": bbx.tolist()}
        for key in (k for k in INDEX_KEYS if k in entry):
            try:
                idx = index_array(entry[key], f"{path}: gnd[{q}][{key!r}]")
            except ValueError as e:
                raise DataError(str(e)) from None
            if idx.size and (idx.min() < 0 or idx.max() >= len(imlist)):
                raise DataError(
                    f"{path}: gnd[{q}][{key!r}] has an index outside imlist ({len(imlist)} images)"
                )
            clean[key] = idx.tolist()
        gnd.append(clean)
    data = RevisitedData(root, name, imlist, qimlist, gnd)
    absent = [n for n in (*imlist, *qimlist) if not data.image_path(n).is_file()]
    if absent:
        raise DataError(
            f"{data.image_path(absent[0])}: image not found ({len(absent)} missing in {root / 'jpg'})"
        )
    return data


def read_image(path: Path, size: int, bbx: Sequence[float] | None = None) -> np.ndarray:
    """``(size, size, 3)`` uint8 RGB image, cropped to ``bbx`` first when given.

    The stored pixels, as the reference code reads them (PIL): an EXIF orientation tag is not applied, so
    ``bbx`` is in the same coordinates as the ground truth's.
    """
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None:
        raise DataError(f"{path}: cannot read image")
    if bbx is not None:
        h, w = bgr.shape[:2]
        x1, y1 = max(0, round(bbx[0])), max(0, round(bbx[1]))
        x2, y2 = min(w, round(bbx[2])), min(h, round(bbx[3]))
        if x2 <= x1 or y2 <= y1:
            raise DataError(f"{path}: bounding box {list(bbx)} is empty inside the {w}x{h} image")
        bgr = bgr[y1:y2, x1:x2]
    return cv2.cvtColor(cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` -> ImageNet-normalised float ``(3, H, W)``."""
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 255
    return (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


class PoolImages(Dataset):
    """Database images then query crops of one dataset, in that order: ``(image, pool index)``.

    Decoded, resized images are kept in memory when all of them fit in ``cache_bytes`` (the embedded data at
    64 px: 15 MB), so epochs after the first decode nothing.
    """

    def __init__(
        self,
        data: RevisitedData,
        image_size: int,
        include_queries: bool = True,
        cache_bytes: int = 512 * 2**20,
    ) -> None:
        image_size = check_positive_int(image_size, "PoolImages: image_size")
        cache_bytes = check_positive_int(cache_bytes, "PoolImages: cache_bytes", minimum=0)
        self.data = data
        self.image_size = image_size
        self.include_queries = include_queries
        fits = len(self) * image_size * image_size * 3 <= cache_bytes
        self._cache: list[np.ndarray | None] | None = [None] * len(self) if fits else None

    def __len__(self) -> int:
        return self.data.num_database + (self.data.num_queries if self.include_queries else 0)

    def _read(self, i: int) -> np.ndarray:
        if i < self.data.num_database:
            return read_image(self.data.image_path(self.data.imlist[i]), self.image_size)
        q = i - self.data.num_database
        return read_image(
            self.data.image_path(self.data.qimlist[q]), self.image_size, self.data.gnd[q]["bbx"]
        )

    def load(self, i: int) -> torch.Tensor:
        """Normalised ``(3, S, S)`` tensor of pool image ``i``."""
        if self._cache is None:
            return to_tensor(self._read(i))
        image = self._cache[i]
        if image is None:
            image = self._cache[i] = self._read(i)
        return to_tensor(image)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.load(i), i


class RevisitedEvalSet(Dataset):
    """Queries (cropped) then database: ``(image, index in qimlist / imlist, is_query)`` batches."""

    def __init__(self, data: RevisitedData, image_size: int) -> None:
        self.pool = PoolImages(data, image_size)
        self.data = data

    def __len__(self) -> int:
        return len(self.pool)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, bool]:
        q = self.data.num_queries
        if not 0 <= i < len(self):
            raise IndexError(i)
        if i < q:
            return self.pool.load(self.data.num_database + i), i, True
        return self.pool.load(i - q), i - q, False


class TrainingTuples(Dataset):
    """(anchor, positive, negatives) image tuples over a training dataset's pool (database + query crops).

    Groups come from the ground truth: query ``q``'s group is its crop plus its easy and hard images, and the
    crops of the queries that share one of them (the same landmark); an anchor is any pool image in a
    group. Its positives are the other members of its groups; images in those groups or their junk are
    never negatives. ``tuples`` (``(n, 2 + num_negatives)`` pool indices) start
    random and are replaced by hard-negative mining (:meth:`set_tuples`). ``augment`` mirrors whole tuples
    and jitters colours (:func:`augment_tuple`).
    """

    def __init__(
        self,
        data: RevisitedData,
        image_size: int,
        num_negatives: int = 5,
        seed: int = 0,
        augment: bool = False,
    ) -> None:
        num_negatives = check_positive_int(num_negatives, f"{data.name}: num_negatives")
        self.data = data
        self.pool = PoolImages(data, image_size)
        self.num_negatives = num_negatives
        self.augment = augment
        n, q = data.num_database, data.num_queries
        members = torch.zeros(q, n + q, dtype=torch.bool)
        junk = torch.zeros_like(members)
        for i, entry in enumerate(data.gnd):
            members[i, [*positives_of(entry), n + i]] = True
            junk[i, entry["junk"]] = True
        # queries that share a database positive show the same place (ROxford's five per landmark): each
        # one's crop belongs to the others' groups, so it is their positive and never their negative
        shared = members[:, :n].float()
        members[:, n:] |= (shared @ shared.T) > 0
        in_group = members.float()
        positives = (in_group.T @ in_group) > 0
        positives.fill_diagonal_(False)
        forbidden = (in_group.T @ (members | junk).float()) > 0
        anchors = (members.any(0) & positives.any(1)).nonzero().flatten()
        if anchors.numel() == 0:
            raise DataError(
                f"{data.root / f'gnd_{data.name}.pkl'}: no query has two or more images to train on"
            )
        allowed = (~forbidden[anchors]).sum(1)
        if int(allowed.min()) < num_negatives:
            raise DataError(
                f"{data.name}: an anchor has only {int(allowed.min())} negatives, fewer than {num_negatives}"
            )
        self.anchors = anchors
        self.positives = positives[anchors]  # (A, pool)
        self.forbidden = forbidden[anchors]  # (A, pool), the anchor itself included
        g = torch.Generator().manual_seed(seed)
        pos = torch.multinomial(self.positives.float(), 1, generator=g)
        neg = torch.multinomial((~self.forbidden).float(), num_negatives, generator=g)
        self.tuples = torch.cat([anchors[:, None], pos, neg], 1)

    def set_tuples(self, tuples: torch.Tensor | np.ndarray | Sequence[Sequence[int]]) -> None:
        """Replace the tuples, ``(n, 2 + num_negatives)`` pool indices (anchor, positive, negatives...);
        float indices must be whole numbers (never truncated)."""
        try:
            arr = np.asarray(tuples.detach().cpu() if isinstance(tuples, torch.Tensor) else tuples)
        except (TypeError, ValueError) as e:
            raise DataError(
                f"tuples must be an (n, {2 + self.num_negatives}) array of pool indices ({e})"
            ) from e
        if arr.ndim != 2 or arr.shape[1] != 2 + self.num_negatives:
            raise DataError(f"tuples must have shape (n, {2 + self.num_negatives}), got {arr.shape}")
        try:
            flat = index_array(arr, "tuples")
        except ValueError as e:
            raise DataError(str(e)) from None
        if flat.size and (flat.min() < 0 or flat.max() >= len(self.pool)):
            raise DataError(f"tuple indices must lie in the pool of {len(self.pool)} images")
        self.tuples = torch.from_numpy(flat.reshape(arr.shape))

    def __len__(self) -> int:
        return len(self.tuples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(2 + num_negatives, 3, S, S)`` images and their pool indices."""
        idx = self.tuples[i]
        images = torch.stack([self.pool.load(int(j)) for j in idx])
        return (augment_tuple(images) if self.augment else images), idx


def augment_tuple(images: torch.Tensor) -> torch.Tensor:
    """Mirror the whole tuple half the time (mirrored places are new places) and jitter each image's colour.

    ``images``: ImageNet-normalised ``(T, 3, H, W)``; draws from torch's global generator (seeded per worker).
    """
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    rgb = images * std + mean
    if torch.rand(()) < 0.5:
        rgb = rgb.flip(-1)
    t = rgb.shape[0]
    gain = (1 + 0.4 * (torch.rand(t, 3, 1, 1) - 0.5)) * (1 + 0.4 * (torch.rand(t, 1, 1, 1) - 0.5))
    rgb = (rgb * gain).clamp(0, 1)
    return (rgb - mean) / std
