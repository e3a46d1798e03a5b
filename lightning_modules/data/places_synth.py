"""Embedded place-recognition data in the revisited Oxford/Paris format (``jpg/`` + ``gnd_<name>.pkl``).

Each place is a procedural facade (wall texture, floors of windows of place-specific shapes, roof, door,
emblems, cornices, pillars) drawn from palettes shared by all places, so colour alone does not identify a
place.
Views put the facade in a street scene (sky, ground, neighbouring buildings) under a perspective warp, scale
change, illumination change (colour cast, gamma, shadow) and occlusion (trees, cars, people, poles):

* easy views: mild changes; hard views: strong ones; junk views: far away and tiny, or under a quarter of
  the facade inside the frame;
* one query per place, a wider scene whose ``bbx`` frames the facade;
* distractors: scenes around facades that belong to no place.

Everything is drawn from ``numpy`` generators seeded by ``(seed, role, place, view)``: the same seed writes
the same bytes. :func:`ensure_places_synth` writes two disjoint datasets (``synth_oxford``,
``synth_paris``; like Oxford and Paris, train on one and test on the other) under ``data_root()`` and reuses
them when present.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from lightning_modules.data.cache import data_root, publishing
from nncf_ext.errors import DataError

GENERATOR_VERSION = 4
DATASETS = {"synth_oxford": 1, "synth_paris": 2, "synth_train": 3}
"""Dataset name -> seed of the embedded datasets: two test sets named for the paper's, and a training set
with places of its own (Pittsburgh's role for NetVLAD), so the demo scores every model on two held-out
sets."""

WALLS = np.array(
    [[222, 205, 170], [190, 190, 185], [170, 85, 60], [215, 180, 120], [240, 238, 228], [150, 110, 80],
     [120, 135, 150], [205, 165, 140]],
    dtype=np.float64,
)  # fmt: skip
GLASS = np.array([[40, 50, 70], [25, 30, 35], [70, 95, 110], [55, 45, 40]], dtype=np.float64)
ACCENTS = np.array(
    [[240, 240, 235], [60, 60, 65], [150, 40, 35], [40, 90, 60], [200, 160, 40], [60, 80, 140]],
    dtype=np.float64,
)
ROOFS = np.array(
    [[90, 70, 60], [70, 80, 90], [130, 60, 45], [60, 100, 90], [110, 110, 115]], dtype=np.float64
)
SHAPES = ("rect", "arch", "round", "lancet", "pane", "slit")


@dataclass(frozen=True)
class SynthConfig:
    """How much one dataset holds; the defaults make 150 places x 6 database views + 150 distractors."""

    num_places: int = 150
    easy_views: int = 2
    hard_views: int = 3
    junk_views: int = 1
    distractors: int = 150
    image_size: int = 128
    query_size: int = 160
    jpeg_quality: int = 92


@dataclass(frozen=True)
class _View:
    scale: tuple[float, float]  # facade height / image height
    perspective: float  # corner jitter, fraction of the facade size
    rotation: float  # degrees
    shift: float  # centre jitter, fraction of the image size
    occlusion: tuple[float, float]  # fraction of the facade covered
    light: float  # illumination change strength


EASY = _View((0.6, 0.8), 0.04, 3.0, 0.04, (0.0, 0.1), 0.2)
HARD = _View((0.55, 0.9), 0.1, 5.0, 0.08, (0.05, 0.25), 0.3)
QUERY = _View((0.6, 0.7), 0.04, 2.0, 0.04, (0.0, 0.05), 0.1)
DISTRACTOR = _View((0.55, 0.9), 0.1, 5.0, 0.08, (0.0, 0.25), 0.3)


def _colour(
    rng: np.random.Generator, palette: np.ndarray, jitter: float = 10.0
) -> tuple[float, float, float]:
    c = np.clip(palette[rng.integers(len(palette))] + rng.normal(0, jitter, 3), 0, 255)
    return float(c[0]), float(c[1]), float(c[2])


def _window(img: np.ndarray, x: int, y: int, w: int, h: int, shape: str, glass: tuple, frame: tuple) -> None:
    """One window of ``shape`` in the box (x, y, w, h) with a frame."""
    t = max(1, w // 8)
    if shape == "round":
        cv2.circle(img, (x + w // 2, y + h // 2), min(w, h) // 2, frame, -1, cv2.LINE_AA)
        cv2.circle(img, (x + w // 2, y + h // 2), max(1, min(w, h) // 2 - t), glass, -1, cv2.LINE_AA)
        return
    if shape == "slit":
        x, w = x + w // 3, max(2, w // 3)
    body_top = y + (w // 2 if shape in ("arch", "lancet") else 0)
    cv2.rectangle(img, (x, body_top), (x + w, y + h), frame, -1)
    if shape == "arch":
        cv2.ellipse(img, (x + w // 2, body_top), (w // 2, w // 2), 0, 180, 360, frame, -1, cv2.LINE_AA)
        cv2.ellipse(
            img, (x + w // 2, body_top), (w // 2 - t, w // 2 - t), 0, 180, 360, glass, -1, cv2.LINE_AA
        )
    if shape == "lancet":
        pts = np.array([[x, body_top], [x + w // 2, y], [x + w, body_top]], np.int32)
        cv2.fillConvexPoly(img, pts, frame, cv2.LINE_AA)
        inner = np.array([[x + t, body_top], [x + w // 2, y + 2 * t], [x + w - t, body_top]], np.int32)
        cv2.fillConvexPoly(img, inner, glass, cv2.LINE_AA)
    cv2.rectangle(img, (x + t, body_top), (x + w - t, y + h - t), glass, -1)
    if shape == "pane":
        cv2.line(img, (x + w // 2, body_top), (x + w // 2, y + h), frame, t)
        cv2.line(img, (x, (body_top + y + h) // 2), (x + w, (body_top + y + h) // 2), frame, t)


def _emblem(img: np.ndarray, rng: np.random.Generator, cx: int, cy: int, r: int) -> None:
    colour = _colour(rng, ACCENTS, 5)
    kind = rng.integers(4)
    if kind == 0:
        cv2.circle(img, (cx, cy), r, colour, -1, cv2.LINE_AA)
        cv2.circle(img, (cx, cy), max(1, r // 2), _colour(rng, ACCENTS, 5), -1, cv2.LINE_AA)
    elif kind == 1:
        pts = np.array([[cx, cy - r], [cx + r, cy], [cx, cy + r], [cx - r, cy]], np.int32)
        cv2.fillConvexPoly(img, pts, colour, cv2.LINE_AA)
    elif kind == 2:
        ang = np.linspace(0, 2 * np.pi, 11)[:-1] - np.pi / 2
        rad = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1).astype(np.int32)
        cv2.fillPoly(img, [pts], colour, cv2.LINE_AA)
    else:
        cv2.circle(img, (cx, cy), r, colour, max(1, r // 3), cv2.LINE_AA)
        cv2.line(img, (cx, cy), (cx, cy - int(r * 0.7)), colour, 1, cv2.LINE_AA)
        cv2.line(img, (cx, cy), (cx + int(r * 0.5), cy), colour, 1, cv2.LINE_AA)


def render_facade(rng: np.random.Generator, height: int = 160) -> np.ndarray:
    """A ``(height, width, 3)`` uint8 RGB facade whose layout is fixed by ``rng``."""
    width = int(height * rng.uniform(0.75, 1.35))
    wall = _colour(rng, WALLS, 12)
    img = np.empty((height, width, 3), np.uint8)
    img[:] = np.array(wall, np.uint8)
    dark = tuple(0.75 * c for c in wall)
    texture, step = rng.integers(4), int(rng.integers(6, 14))
    if texture == 1:  # bricks
        for i, y in enumerate(range(0, height, step)):
            cv2.line(img, (0, y), (width, y), dark, 1)
            for x in range(((i % 2) * step) % (2 * step), width, 2 * step):
                cv2.line(img, (x, y), (x, y + step), dark, 1)
    elif texture == 2:  # horizontal stripes
        for y in range(0, height, 2 * step):
            cv2.rectangle(img, (0, y), (width, y + step // 2), dark, -1)
    elif texture == 3:  # stone blocks
        for y in range(0, height, 2 * step):
            cv2.line(img, (0, y), (width, y), dark, 2)
        for x in range(0, width, 3 * step):
            cv2.line(img, (x, 0), (x, height), dark, 1)

    roof_h = int(height * rng.uniform(0.12, 0.28))
    roof = _colour(rng, ROOFS, 10)
    roof_kind = rng.integers(4)
    if roof_kind == 0:  # flat cornice
        cv2.rectangle(img, (0, 0), (width, roof_h // 2), roof, -1)
    elif roof_kind == 1:  # pediment
        pts = np.array([[0, roof_h], [width // 2, 0], [width, roof_h]], np.int32)
        cv2.fillConvexPoly(img, pts, roof, cv2.LINE_AA)
    elif roof_kind == 2:  # dome
        cv2.ellipse(img, (width // 2, roof_h), (width // 4, roof_h), 0, 180, 360, roof, -1, cv2.LINE_AA)
    else:  # crenellations
        merlon = max(4, width // int(rng.integers(5, 10)))
        for x in range(0, width, 2 * merlon):
            cv2.rectangle(img, (x, 0), (x + merlon, roof_h), roof, -1)
    if rng.random() < 0.6:
        _emblem(img, rng, width // 2, int(roof_h * 0.6), max(3, roof_h // 3))

    floors, cols = int(rng.integers(2, 5)), int(rng.integers(2, 6))
    shapes = [SHAPES[i] for i in rng.integers(len(SHAPES), size=2)]
    pattern = rng.integers(3)  # 0: one shape, 1: alternate by floor, 2: alternate by column
    glass, frame = _colour(rng, GLASS, 8), _colour(rng, ACCENTS, 8)
    body_top, margin = roof_h + 4, int(width * rng.uniform(0.05, 0.15))
    cell_w, cell_h = (width - 2 * margin) / cols, (height - body_top) / floors
    fill_w, fill_h = rng.uniform(0.4, 0.75), rng.uniform(0.45, 0.75)
    door_col = int(rng.integers(cols))
    missing = rng.random((floors, cols)) < 0.12  # blind windows, part of the layout
    for f in range(floors):
        if rng.random() < 0.4 and f > 0:  # cornice band
            yb = int(body_top + f * cell_h)
            cv2.rectangle(img, (0, yb - 2), (width, yb + 1), frame, -1)
        for c in range(cols):
            x0, y0 = margin + c * cell_w, body_top + f * cell_h
            if f == floors - 1 and c == door_col:
                dw, dh = int(cell_w * 0.6), int(cell_h * 0.85)
                _window(
                    img,
                    int(x0 + (cell_w - dw) / 2),
                    int(y0 + cell_h - dh),
                    dw,
                    dh,
                    "arch",
                    (60, 40, 30),
                    frame,
                )
                continue
            if missing[f, c]:
                continue
            shape = shapes[{0: 0, 1: f % 2, 2: c % 2}[int(pattern)]]
            w, h = int(cell_w * fill_w), int(cell_h * fill_h)
            _window(img, int(x0 + (cell_w - w) / 2), int(y0 + (cell_h - h) / 2), w, h, shape, glass, frame)
    if rng.random() < 0.35:  # pillars
        for c in range(cols + 1):
            x = int(margin + c * cell_w)
            cv2.rectangle(img, (x - 2, body_top), (x + 2, height), frame, -1)
    for _ in range(int(rng.integers(0, 3))):
        _emblem(
            img,
            rng,
            int(rng.uniform(0.15, 0.85) * width),
            int(rng.uniform(0.3, 0.9) * height),
            int(height * 0.06),
        )
    return img


def _occluder(img: np.ndarray, rng: np.random.Generator, x: int, y: int, s: int) -> None:
    """A tree, car, person or pole standing on (x, y) of size about ``s``."""
    kind = rng.integers(4)
    if kind == 0:
        cv2.rectangle(img, (x - s // 10, y - s // 2), (x + s // 10, y), (90, 65, 40), -1)
        green = (float(rng.uniform(30, 80)), float(rng.uniform(90, 150)), float(rng.uniform(30, 70)))
        for _ in range(3):
            c = (x + int(rng.normal(0, s / 6)), y - s // 2 - int(rng.uniform(0, s / 3)))
            cv2.circle(img, c, int(s * rng.uniform(0.25, 0.4)), green, -1, cv2.LINE_AA)
    elif kind == 1:
        colour = tuple(float(v) for v in rng.uniform(20, 230, 3))
        cv2.rectangle(img, (x - s // 2, y - s // 3), (x + s // 2, y - s // 10), colour, -1)
        cv2.rectangle(img, (x - s // 4, y - s // 2), (x + s // 4, y - s // 3), colour, -1)
        for dx in (-s // 3, s // 3):
            cv2.circle(img, (x + dx, y - s // 10), max(2, s // 8), (20, 20, 20), -1, cv2.LINE_AA)
    elif kind == 2:
        colour = tuple(float(v) for v in rng.uniform(20, 230, 3))
        cv2.ellipse(img, (x, y - s // 3), (max(2, s // 8), s // 3), 0, 0, 360, colour, -1, cv2.LINE_AA)
        cv2.circle(img, (x, y - int(s * 0.72)), max(2, s // 9), (200, 160, 130), -1, cv2.LINE_AA)
    else:
        cv2.rectangle(img, (x - 1, y - s), (x + 1, y), (50, 50, 50), -1)
        cv2.circle(img, (x, y - s), max(2, s // 10), (240, 230, 150), -1, cv2.LINE_AA)


def visible_fraction(quad: np.ndarray, size: int) -> float:
    """Share of the convex quadrilateral ``quad`` (4 x 2 corners) inside the ``size`` x ``size`` frame."""
    frame = np.array([[0, 0], [size, 0], [size, size], [0, size]], np.float32)
    inside, _ = cv2.intersectConvexConvex(quad.astype(np.float32), frame)
    return float(inside) / max(float(cv2.contourArea(quad.astype(np.float32))), 1e-9)


def out_of_frame(quad: np.ndarray, size: int, side: int, share: float, limit: float = 0.25) -> np.ndarray:
    """``quad`` moved sideways (``side`` -1: left, 1: right) until about ``share`` of its width, and at
    most ``limit`` of its area, is left inside the frame."""
    width = max(float(np.ptp(quad[:, 0])), 1.0)
    edge = quad[:, 0].max() if side < 0 else quad[:, 0].min()
    target = share * width if side < 0 else size - share * width
    quad = quad + np.array([target - edge, 0.0])
    while visible_fraction(quad, size) > limit:
        quad = quad + np.array([side * 0.02 * width, 0.0])
    return quad


def render_view(
    facade: np.ndarray, rng: np.random.Generator, view: _View, size: int, junk: bool = False
) -> tuple[np.ndarray, list[float]]:
    """A ``size`` x ``size`` RGB street scene around ``facade`` and the facade's box [x1, y1, x2, y2]."""
    top, bottom = (
        _colour(rng, np.array([[120, 170, 230], [190, 200, 210], [235, 190, 150]]), 15),
        rng.uniform(0, 40, 3),
    )
    ramp = np.linspace(0, 1, size)[:, None, None]
    img = (np.array(top) * (1 - ramp) + (np.array(top) * 0.6 + bottom) * ramp).repeat(size, 1)
    img = np.ascontiguousarray(img.astype(np.uint8))
    ground = int(size * rng.uniform(0.8, 0.92))
    cv2.rectangle(
        img, (0, ground), (size, size), _colour(rng, np.array([[110, 110, 110], [90, 120, 70]]), 10), -1
    )
    for side in (-1, 1):  # neighbouring buildings that belong to no place
        if rng.random() < 0.35:
            neighbour = render_facade(np.random.default_rng(rng.integers(2**32)), height=int(size * 0.7))
            nw = neighbour.shape[1]
            x0 = int(size / 2 + side * size * rng.uniform(0.5, 0.7)) - nw // 2
            y0 = ground - neighbour.shape[0]
            xs, xe = max(0, x0), min(size, x0 + nw)
            if xe > xs:
                img[max(0, y0) : ground, xs:xe] = neighbour[max(0, -y0) :, xs - x0 : xe - x0]

    fh, fw = facade.shape[:2]
    scale = rng.uniform(*view.scale) * size / fh
    centre = np.array([size / 2, ground - fh * scale / 2]) + rng.normal(0, view.shift * size, 2)
    off_frame = None  # junk: far away and tiny, or mostly out of the frame (side, share left in view)
    if junk:
        if rng.random() < 0.5:
            scale *= rng.uniform(0.2, 0.3)
        else:
            off_frame = (int(rng.choice([-1, 1])), float(rng.uniform(0.08, 0.2)))
    corners = np.array([[0, 0], [fw, 0], [fw, fh], [0, fh]], np.float64)
    dst = (corners - [fw / 2, fh / 2]) * scale
    angle = np.deg2rad(rng.normal(0, view.rotation))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = dst @ rot.T + centre + rng.uniform(-1, 1, (4, 2)) * view.perspective * np.array([fw, fh]) * scale
    if off_frame is not None:
        dst = out_of_frame(dst, size, *off_frame)
    homography = cv2.getPerspectiveTransform(corners.astype(np.float32), dst.astype(np.float32))
    warped = cv2.warpPerspective(facade, homography, (size, size), flags=cv2.INTER_AREA)
    mask = cv2.warpPerspective(np.full((fh, fw), 255, np.uint8), homography, (size, size)) > 127
    img[mask] = warped[mask]
    x1, y1 = np.clip(dst.min(0), 0, size)
    x2, y2 = np.clip(dst.max(0), 0, size)

    area = max(1.0, (x2 - x1) * (y2 - y1))
    covered, target = 0.0, rng.uniform(*view.occlusion)
    while covered < target * area:
        s = int(size * rng.uniform(0.15, 0.4))
        _occluder(img, rng, int(rng.uniform(x1, max(x1 + 1, x2))), int(rng.uniform(ground - 5, size)), s)
        covered += 0.35 * s * s

    out = img.astype(np.float64) / 255
    gain = 1 + rng.uniform(-view.light, view.light, 3)
    out = out * gain * (1 + rng.uniform(-view.light, view.light))
    out = np.clip(out, 0, 1) ** np.exp(rng.uniform(-view.light, view.light))
    direction = rng.normal(size=2)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    shadow = np.clip((xx * direction[0] + yy * direction[1]) * 2 + 0.5, 0, 1)
    out *= 1 - rng.uniform(0, 1.2 * view.light) * shadow[..., None]
    out = out * 255 + rng.normal(0, 3, out.shape)
    out = cv2.GaussianBlur(np.clip(out, 0, 255).astype(np.uint8), (0, 0), rng.uniform(0.3, 0.9))
    return out, [float(x1), float(y1), float(x2), float(y2)]


def _write_jpeg(path: Path, rgb: np.ndarray, quality: int) -> None:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OSError(f"could not encode {path}")
    path.write_bytes(buf.tobytes())


@dataclass
class RenderedPlaces:
    """One dataset in memory: database images (``imlist`` order) with (place, kind); queries with bbx."""

    images: list[np.ndarray]
    labels: list[tuple[int, str]]  # (place, "easy" / "hard" / "junk"), or (-1, "distractor")
    queries: list[np.ndarray]
    bbx: list[list[float]]

    def gnd(self) -> list[dict[str, list]]:
        """Revisited ground truth: per place its ``bbx`` and the sorted database indices of each kind."""
        out: list[dict[str, list]] = [{"bbx": b, "easy": [], "hard": [], "junk": []} for b in self.bbx]
        for i, (place, kind) in enumerate(self.labels):
            if place >= 0:
                out[place][kind].append(i)
        return out


def render_places(seed: int, config: SynthConfig = SynthConfig()) -> RenderedPlaces:
    """Render one dataset (deterministic in ``seed``); the database order is a seeded shuffle."""
    views = [("easy", EASY)] * config.easy_views + [("hard", HARD)] * config.hard_views
    views += [("junk", HARD)] * config.junk_views
    images, labels, queries, boxes = [], [], [], []
    for place in range(config.num_places):
        facade = render_facade(np.random.default_rng([seed, 0, place]))
        query, bbx = render_view(facade, np.random.default_rng([seed, 1, place]), QUERY, config.query_size)
        queries.append(query)
        boxes.append(bbx)
        for v, (kind, view) in enumerate(views):
            rng = np.random.default_rng([seed, 2, place, v])
            images.append(render_view(facade, rng, view, config.image_size, junk=kind == "junk")[0])
            labels.append((place, kind))
    for d in range(config.distractors):
        facade = render_facade(np.random.default_rng([seed, 3, d]))
        images.append(
            render_view(facade, np.random.default_rng([seed, 4, d]), DISTRACTOR, config.image_size)[0]
        )
        labels.append((-1, "distractor"))
    order = np.random.default_rng([seed, 5]).permutation(len(images))  # database order carries no labels
    return RenderedPlaces([images[i] for i in order], [labels[i] for i in order], queries, boxes)


def generate_places(
    out_dir: str | Path, name: str, seed: int, config: SynthConfig = SynthConfig()
) -> RenderedPlaces:
    """Write one dataset as ``out_dir/jpg/*.jpg`` + ``out_dir/gnd_<name>.pkl``; returns what was rendered."""
    out = Path(out_dir)
    (out / "jpg").mkdir(parents=True, exist_ok=True)
    rendered = render_places(seed, config)
    imlist = [f"img_{i:05d}" for i in range(len(rendered.images))]
    qimlist = [f"query_{q:04d}" for q in range(len(rendered.queries))]
    for names, images in ((imlist, rendered.images), (qimlist, rendered.queries)):
        for image_name, image in zip(names, images, strict=True):
            _write_jpeg(out / "jpg" / f"{image_name}.jpg", image, config.jpeg_quality)
    with open(out / f"gnd_{name}.pkl", "wb") as f:
        pickle.dump({"imlist": imlist, "qimlist": qimlist, "gnd": rendered.gnd()}, f, protocol=4)
    return rendered


def ensure_places_synth(
    root: str | Path | None = None,
    config: SynthConfig = SynthConfig(),
    datasets: Mapping[str, int] | None = None,
) -> dict[str, Path]:
    """The embedded datasets under ``root`` (default ``data_root()/places_synth``), generated when missing;
    ``datasets`` (name -> generator seed) replaces :data:`DATASETS`, for more held-out sets of the same kind.

    A cached copy is reused when its ``manifest.json`` matches the generator version, seed and config; a
    dataset is written to a temporary directory and renamed into place, so concurrent or interrupted runs
    never leave half-written data. Returns ``{name: dataset directory}``.
    """
    wanted = dict(DATASETS if datasets is None else datasets)
    for name, seed in wanted.items():
        if DATASETS.get(name, seed) != seed:
            raise DataError(f"datasets: {name!r} is an embedded set of seed {DATASETS[name]}, not {seed}")
    base = Path(root) if root is not None else data_root() / "places_synth"
    base.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, seed in wanted.items():
        target = base / name
        manifest = {"version": GENERATOR_VERSION, "name": name, "seed": seed, "config": asdict(config)}

        def complete(path: Path, manifest: dict[str, object] = manifest) -> bool:
            file = path / "manifest.json"
            return file.is_file() and json.loads(file.read_text()) == manifest

        if not complete(target):
            with publishing(target, complete) as tmp:
                generate_places(tmp, name, seed, config)
                (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        paths[name] = target
    return paths
