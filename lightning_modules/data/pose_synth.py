"""Embedded 6D pose data set: procedural objects rendered offscreen, written in BOP format, cached by config.

Two objects: an L-shaped block built from two boxes whose faces carry distinct colours (no symmetry)
and a banded cylinder (continuous symmetry about z). Each image shows one of them at a random viewpoint,
depth and image position over a procedural background, with random lighting, sensor noise, clutter
behind it and, often, an occluder in front; ``instances=n`` shows n instances of one of them instead, each
at its own viewpoint and depth, without an occluder. Viewpoints are LINEMOD-like by default: the object stands
upright (z up) and is seen from any azimuth at an elevation in ``elevation_range``, with some camera
roll; ``viewpoints="sphere"`` draws uniform rotations instead. Every image draws from its own seeded
stream, so a config always yields the same bytes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import trimesh

from lightning_modules.data.cache import data_root, publishing
from lightning_modules.data.meshes import box_mesh, cylinder_mesh, diameter, l_block_mesh, mesh_arrays
from lightning_modules.data.render import Light, MeshArrays, Renderer

OBJECT_NAMES = {1: "l_block", 2: "cylinder"}
GENERATOR_VERSION = 5  # bump whenever drawing or rendering changes, so that no stale cache is reused
MAX_INSTANCES = 4
_INFO_FILE = "dataset_info.json"


@dataclass(frozen=True)
class SynthConfig:
    """What the generator draws; any change gives a different cache directory."""

    seed: int = 0
    image_size: int = 128
    focal: float = 150.0  # pixels
    num_train: int = 8000
    num_test: int = 600
    depth_range: tuple[float, float] = (200.0, 600.0)  # mm, object centre
    viewpoints: str = "upper"  # "upper": upright object seen from above; "sphere": uniform rotations
    elevation_range: tuple[float, float] = (5.0, 75.0)  # degrees above the object's xy-plane ("upper")
    max_roll: float = 25.0  # degrees of camera roll about its optical axis ("upper")
    occlusion_prob: float = 0.5
    min_visib_fract: float = 0.4  # an occluder leaves at least this much of the in-image silhouette visible
    max_distractors: int = 2
    supersample: int = 3
    instances: int = 1  # > 1: that many instances of one object per image (T-LESS-like), and no occluder

    def __post_init__(self) -> None:
        if self.image_size < 16 or self.num_train < 0 or self.num_test < 0:
            raise ValueError(f"image_size must be >= 16 and counts >= 0, got {self}")
        lo, hi = self.depth_range
        if not 0 < lo < hi:
            raise ValueError(f"depth_range must satisfy 0 < near < far, got {self.depth_range}")
        if self.viewpoints not in ("upper", "sphere"):
            raise ValueError(f"viewpoints must be 'upper' or 'sphere', got {self.viewpoints!r}")
        if not 1 <= self.instances <= MAX_INSTANCES:
            raise ValueError(f"instances must lie in 1..{MAX_INSTANCES}, got {self.instances}")

    def key(self) -> str:
        fields = asdict(self)
        if fields["instances"] == 1:  # added after version 5: the keys of one-instance data sets stay
            del fields["instances"]
        blob = json.dumps({"version": GENERATOR_VERSION, **fields}, sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:8]

    def camera(self) -> np.ndarray:
        s = self.image_size
        return np.array(
            [[self.focal, 0, (s - 1) / 2], [0, self.focal, (s - 1) / 2], [0, 0, 1]], dtype=np.float64
        )


# The block's faces (+x, -x, +y, -y, +z, -z) in distinct saturated colours, so every view shows which way
# it is turned; each face is a checker of its colour and a darker shade.
BOX_FACE_COLOURS = np.array(
    [
        [0.9, 0.15, 0.1],
        [0.1, 0.7, 0.15],
        [0.15, 0.3, 0.95],
        [0.95, 0.85, 0.1],
        [0.85, 0.2, 0.85],
        [0.1, 0.8, 0.85],
    ]
)


def make_models(seed: int = 0) -> dict[int, trimesh.Trimesh]:
    """The two object models (mm); the cylinder's band colours are drawn from ``seed``."""
    rng = np.random.default_rng([seed, 7])
    palette = np.stack([BOX_FACE_COLOURS, 0.55 * BOX_FACE_COLOURS], axis=1)
    return {1: l_block_mesh(palette, rng), 2: cylinder_mesh(28.0, 84.0, rng)}


def models_info(models: dict[int, trimesh.Trimesh]) -> dict[str, dict[str, object]]:
    """BOP ``models_info.json`` entries: diameter, bounding box, symmetries."""
    info: dict[str, dict[str, object]] = {}
    for obj_id, mesh in models.items():
        v = np.asarray(mesh.vertices, dtype=np.float64)
        lo, size = v.min(0), v.max(0) - v.min(0)
        entry: dict[str, object] = {
            "diameter": round(diameter(v), 6),
            **{f"min_{a}": round(float(lo[i]), 6) for i, a in enumerate("xyz")},
            **{f"size_{a}": round(float(size[i]), 6) for i, a in enumerate("xyz")},
        }
        if OBJECT_NAMES[obj_id] == "cylinder":
            entry["symmetries_continuous"] = [{"axis": [0, 0, 1], "offset": [0, 0, 0]}]
        info[str(obj_id)] = entry
    return info


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniform rotation from a normalised Gaussian quaternion."""
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def upright_rotation(
    rng: np.random.Generator, elevation_range: tuple[float, float], max_roll: float
) -> np.ndarray:
    """Camera-from-object rotation of an upright object (z up) seen from a random azimuth, an elevation
    in ``elevation_range`` (degrees) and a camera roll within +-``max_roll`` degrees."""
    az = rng.uniform(0, 2 * np.pi)
    el = np.radians(rng.uniform(*elevation_range))
    forward = -np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])  # camera -> object
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    roll = np.radians(rng.uniform(-max_roll, max_roll))
    c, s = np.cos(roll), np.sin(roll)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.stack([right, down, forward])


def background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A procedural textured background (H, W, 3) in [0, 1]: smooth colour field, gratings, shapes, noise."""
    low = rng.uniform(0, 1, (rng.integers(2, 6), rng.integers(2, 6), 3)).astype(np.float32)
    img = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for _ in range(rng.integers(0, 3)):
        theta, freq, phase = rng.uniform(0, np.pi), rng.uniform(2, 20), rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
        img += wave[..., None] * rng.uniform(-0.15, 0.15, 3).astype(np.float32)
    for _ in range(rng.integers(3, 12)):
        colour = tuple(float(c) for c in rng.uniform(0, 1, 3))
        c = rng.integers(0, size, 2)
        r = rng.integers(size // 40 + 1, size // 5 + 2, 2)
        if rng.random() < 0.5:
            cv2.rectangle(
                img, (int(c[0] - r[0]), int(c[1] - r[1])), (int(c[0] + r[0]), int(c[1] + r[1])), colour, -1
            )
        else:
            cv2.ellipse(
                img,
                (int(c[0]), int(c[1])),
                (int(r[0]), int(r[1])),
                float(rng.uniform(0, 180)),
                0,
                360,
                colour,
                -1,
            )
    img += np.asarray(rng.normal(0, 0.03, img.shape), dtype=np.float32)
    return np.clip(img, 0, 1)


def _clutter_mesh(rng: np.random.Generator) -> MeshArrays:
    """A random box or cylinder with a random per-cell colour texture (unlike the objects' patterns)."""
    if rng.random() < 0.6:
        size = tuple(float(s) for s in rng.uniform(20, 80, 3))
        arrays = mesh_arrays(box_mesh(size, rng, cell=float(rng.uniform(6, 20))))  # type: ignore[arg-type]
    else:
        arrays = mesh_arrays(
            cylinder_mesh(float(rng.uniform(10, 30)), float(rng.uniform(20, 90)), rng, segments=24, bands=4)
        )
    cells = rng.uniform(0.05, 1.0, (len(arrays.vertices) // 4, 1, 3)) * np.ones((1, 4, 1))
    colours = np.concatenate([cells.reshape(-1, 3), np.ones((len(arrays.vertices), 1))], axis=1)
    return MeshArrays(arrays.vertices, arrays.normals, colours.astype(np.float32), arrays.faces)


def _light(rng: np.random.Generator) -> Light:
    d = rng.normal(size=3)
    d[2] = -abs(d[2]) - 0.3  # in front of the object, towards the camera
    return Light(
        direction=(float(d[0]), float(d[1]), float(d[2])),
        color=tuple(float(c) for c in rng.uniform(0.45, 1.1) * rng.uniform(0.85, 1.15, 3)),  # type: ignore[arg-type]
        ambient=float(rng.uniform(0.1, 0.5)),
        specular=float(rng.uniform(0.0, 0.5)),
    )


def _bbox(mask: np.ndarray, offset: int = 0) -> list[int]:
    """(x, y, w, h) of a mask as ``bop_toolkit_lib.misc.calc_2d_bbox``: w = x_max - x_min; empty: -1s.
    ``offset``: where the image starts on a larger canvas."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [-1, -1, -1, -1]
    x, y = int(xs.min()), int(ys.min())
    return [x - offset, y - offset, int(xs.max()) - x, int(ys.max()) - y]


@dataclass(frozen=True)
class _Instance:
    mask: np.ndarray  # (H, W) bool, whole silhouette
    mask_visib: np.ndarray  # (H, W) bool, visible part
    obj_id: int
    R: np.ndarray
    t: np.ndarray
    px_count_all: int  # pixels of the whole silhouette, the part outside the image included
    bbox_obj: list[int]  # its box, which may reach outside the image


@dataclass(frozen=True)
class _Sample:
    rgb: np.ndarray  # (H, W, 3) uint8
    instances: list[_Instance]


class _SceneWriter:
    """Draws and renders the images of one split."""

    def __init__(self, cfg: SynthConfig, models: dict[int, MeshArrays], diameters: dict[int, float]):
        self.cfg, self.models, self.diameters = cfg, models, diameters
        self.renderer = Renderer(cfg.image_size, cfg.image_size, cfg.supersample)
        self.K = cfg.camera()

    def _place(self, rng: np.random.Generator, depth: float, margin: float) -> np.ndarray:
        s = self.cfg.image_size
        uv = rng.uniform(margin * s, (1 - margin) * s, 2)
        return depth * np.linalg.solve(self.K, np.array([uv[0], uv[1], 1.0]))

    def _pose(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
        """A random object pose R, t (rotation from the configured viewpoints, depth, image position) and
        its depth."""
        cfg = self.cfg
        if cfg.viewpoints == "sphere":
            R = random_rotation(rng)
        else:
            R = upright_rotation(rng, cfg.elevation_range, cfg.max_roll)
        z = float(rng.uniform(*cfg.depth_range))
        return R, self._place(rng, z, 0.15), z

    def sample(self, rng: np.random.Generator) -> _Sample:
        """Render one image; returns rgb uint8, masks, the object's pose and the camera."""
        cfg = self.cfg
        obj_id = int(rng.integers(1, len(self.models) + 1))
        R, t, z = self._pose(rng)
        light = _light(rng)
        bg = background(cfg.image_size, rng)
        behind = [
            (_clutter_mesh(rng), random_rotation(rng), self._place(rng, z + float(rng.uniform(80, 400)), 0.0))
            for _ in range(rng.integers(0, cfg.max_distractors + 1))
        ]
        occluders: list[tuple[MeshArrays, np.ndarray, np.ndarray]] = []
        if rng.random() < cfg.occlusion_prob:
            radius_px = self.diameters[obj_id] / 2 * cfg.focal / z
            mesh = _clutter_mesh(rng)
            z_occ = z * float(rng.uniform(0.55, 0.85))
            direction = rng.normal(size=2)
            direction /= np.linalg.norm(direction)
            uv = self.K[:2] @ (t / z)
            for reach in np.linspace(rng.uniform(0.4, 0.9), 2.0, 4):  # move away until enough stays visible
                uv_occ = uv + direction * reach * radius_px
                t_occ = z_occ * np.linalg.solve(self.K, np.array([uv_occ[0], uv_occ[1], 1.0]))
                occluders = [(mesh, random_rotation(rng), t_occ)]
                visib, full = self._visibility(obj_id, R, t, occluders)
                if full > 0 and visib / full >= cfg.min_visib_fract:
                    break
            else:
                occluders = []
        return self._render(rng, [(obj_id, R, t)], occluders, behind, light, bg)

    def sample_instances(self, rng: np.random.Generator) -> _Sample:
        """Render ``cfg.instances`` instances of one object, each at its own viewpoint and depth, with their
        projected centres at least one projected radius apart (they may hide parts of each other)."""
        cfg = self.cfg
        obj_id = int(rng.integers(1, len(self.models) + 1))
        poses: list[tuple[int, np.ndarray, np.ndarray]] = []
        placed: list[tuple[np.ndarray, float]] = []  # projected centre and radius (px) of each instance
        for _ in range(1000 * cfg.instances):
            R, t, z = self._pose(rng)
            uv, radius = self.K[:2] @ (t / z), self.diameters[obj_id] / 2 * cfg.focal / z
            if all(np.linalg.norm(uv - c) >= max(radius, r) for c, r in placed):
                poses.append((obj_id, R, t))
                placed.append((uv, radius))
                if len(poses) == cfg.instances:
                    break
        else:
            raise ValueError(
                f"could not place {cfg.instances} instances apart in a {cfg.image_size} px image"
            )
        light = _light(rng)
        bg = background(cfg.image_size, rng)
        far = max(t[2] for _, _, t in poses)
        behind = [
            (
                _clutter_mesh(rng),
                random_rotation(rng),
                self._place(rng, far + float(rng.uniform(80, 400)), 0.0),
            )
            for _ in range(rng.integers(0, cfg.max_distractors + 1))
        ]
        return self._render(rng, poses, [], behind, light, bg)

    def _render(
        self,
        rng: np.random.Generator,
        poses: list[tuple[int, np.ndarray, np.ndarray]],
        occluders: list[tuple[MeshArrays, np.ndarray, np.ndarray]],
        behind: list[tuple[MeshArrays, np.ndarray, np.ndarray]],
        light: Light,
        bg: np.ndarray,
    ) -> _Sample:
        """Render ``poses`` (obj_id, R, t) with ``occluders`` and ``behind`` (clutter) over ``bg``."""
        scene = [*((self.models[o], R, t) for o, R, t in poses), *occluders, *behind]
        colour, coverage, ids = self.renderer.render(scene, self.K, light)
        instances = []
        for i, (obj_id, R, t) in enumerate(poses):
            mask_visib = self.renderer.downsample((ids == i + 1).astype(np.float32)) >= 0.5
            silhouette = self.renderer.silhouette(*scene[i], self.K)
            mask = self.renderer.downsample(silhouette.astype(np.float32)) >= 0.5
            px_count_all, bbox_obj = self._whole_silhouette(obj_id, R, t, mask, silhouette)
            instances.append(_Instance(mask, mask_visib, obj_id, R, t, px_count_all, bbox_obj))
        image = colour + (1.0 - coverage[..., None]) * bg
        gain = rng.uniform(0.75, 1.25) * rng.uniform(0.9, 1.1, 3)
        image = image * gain + rng.uniform(-0.06, 0.06) + rng.normal(0, rng.uniform(0.005, 0.03), image.shape)
        rgb = np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)
        return _Sample(rgb, instances)

    def _whole_silhouette(
        self, obj_id: int, R: np.ndarray, t: np.ndarray, mask: np.ndarray, supersampled: np.ndarray
    ) -> tuple[int, list[int]]:
        """Pixel count and box of the object's whole silhouette, as BOP's ``calc_gt_info`` measures them on a
        canvas three times the image: the part cut off by the image border counts too. ``mask`` is the
        in-image silhouette, ``supersampled`` the same before downsampling."""
        border = supersampled[0].any() or supersampled[-1].any() or supersampled[:, 0].any()
        if not (border or supersampled[:, -1].any()):
            return int(mask.sum()), _bbox(mask)
        size = self.cfg.image_size
        canvas = np.zeros((3 * size, 3 * size), dtype=bool)
        for row, col in itertools.product(range(3), range(3)):
            tile = mask
            if (row, col) != (1, 1):  # render the neighbouring image: the principal point shifted by a size
                K = self.K.copy()
                K[:2, 2] -= ((col - 1) * size, (row - 1) * size)
                silhouette = self.renderer.silhouette(self.models[obj_id], R, t, K)
                tile = self.renderer.downsample(silhouette.astype(np.float32)) >= 0.5
            canvas[row * size : (row + 1) * size, col * size : (col + 1) * size] = tile
        return int(canvas.sum()), _bbox(canvas, offset=size)

    def _visibility(
        self,
        obj_id: int,
        R: np.ndarray,
        t: np.ndarray,
        occluders: list[tuple[MeshArrays, np.ndarray, np.ndarray]],
    ) -> tuple[int, int]:
        _, _, ids = self.renderer.render([(self.models[obj_id], R, t), *occluders], self.K, Light())
        return int((ids == 1).sum()), int(self.renderer.silhouette(self.models[obj_id], R, t, self.K).sum())

    def write_split(self, split_dir: Path, count: int, split_seed: int) -> None:
        scene = split_dir / "000000"
        for sub in ("rgb", "mask", "mask_visib"):
            (scene / sub).mkdir(parents=True, exist_ok=True)
        K_list = [float(v) for v in self.K.reshape(-1)]
        scene_gt: dict[str, list[dict[str, object]]] = {}
        scene_gt_info: dict[str, list[dict[str, object]]] = {}
        scene_camera: dict[str, dict[str, object]] = {}
        draw = self.sample if self.cfg.instances == 1 else self.sample_instances
        for im_id in range(count):
            s = draw(np.random.default_rng([self.cfg.seed, split_seed, im_id]))
            name = f"{im_id:06d}"
            cv2.imwrite(str(scene / "rgb" / f"{name}.png"), np.ascontiguousarray(s.rgb[..., ::-1]))
            scene_gt[str(im_id)], scene_gt_info[str(im_id)] = [], []
            for gt_idx, inst in enumerate(s.instances):
                stem = f"{name}_{gt_idx:06d}.png"
                cv2.imwrite(str(scene / "mask" / stem), inst.mask.astype(np.uint8) * 255)
                cv2.imwrite(str(scene / "mask_visib" / stem), inst.mask_visib.astype(np.uint8) * 255)
                scene_gt[str(im_id)].append(
                    {
                        "cam_R_m2c": [float(v) for v in inst.R.reshape(-1)],
                        "cam_t_m2c": [float(v) for v in inst.t.reshape(-1)],
                        "obj_id": inst.obj_id,
                    }
                )
                full, visib = inst.px_count_all, int(inst.mask_visib.sum())
                scene_gt_info[str(im_id)].append(
                    {
                        "bbox_obj": inst.bbox_obj,
                        "bbox_visib": _bbox(inst.mask_visib),
                        "px_count_all": full,
                        "px_count_visib": visib,
                        "visib_fract": round(visib / full, 6) if full else 0.0,
                    }
                )
            scene_camera[str(im_id)] = {"cam_K": K_list, "depth_scale": 1.0}
        for name, data in (
            ("scene_gt.json", scene_gt),
            ("scene_camera.json", scene_camera),
            ("scene_gt_info.json", scene_gt_info),
        ):
            (scene / name).write_text(json.dumps(data, indent=1))


def write_pose_synth(cfg: SynthConfig, root: Path) -> Path:
    """Write the data set in BOP format under ``root`` (models/, train/, test/, dataset_info.json)."""
    meshes = make_models(cfg.seed)
    (root / "models").mkdir(parents=True, exist_ok=True)
    for obj_id, mesh in meshes.items():
        mesh.export(str(root / "models" / f"obj_{obj_id:06d}.ply"), file_type="ply", encoding="binary")
    info = models_info(meshes)
    (root / "models" / "models_info.json").write_text(json.dumps(info, indent=1))
    arrays = {k: mesh_arrays(m) for k, m in meshes.items()}
    writer = _SceneWriter(cfg, arrays, {int(k): float(v["diameter"]) for k, v in info.items()})  # type: ignore[arg-type]
    writer.write_split(root / "train", cfg.num_train, 1)
    writer.write_split(root / "test", cfg.num_test, 2)
    writer.renderer.release()
    config = asdict(cfg)
    if config["instances"] == 1:  # as in the key: one-instance data sets stay as they were written
        del config["instances"]
    info_file = {"generator": "pose_synth", "version": GENERATOR_VERSION, "config": config}
    (root / _INFO_FILE).write_text(json.dumps(info_file, indent=1))
    return root


def pose_synth(cfg: SynthConfig | None = None, root: Path | None = None) -> Path:
    """The embedded data set's directory, generated on first use: ``data_root()/pose_synth_<seed>_<key>``."""
    cfg = cfg or SynthConfig()
    target = (root or data_root()) / f"pose_synth_{cfg.seed}_{cfg.key()}"

    def complete(path: Path) -> bool:  # the config's key is in the name; the info file is written last
        return (path / _INFO_FILE).is_file()

    if not complete(target):
        with publishing(target, complete) as tmp:
            write_pose_synth(cfg, tmp)
    return target
