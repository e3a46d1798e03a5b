"""Procedural vertex-coloured meshes: a textured box (no symmetry), a banded cylinder (axial symmetry)."""

from __future__ import annotations

import contextlib

import numpy as np
import trimesh
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

from lightning_modules.data.render import MeshArrays


def _grid_quads(
    origin: np.ndarray, du: np.ndarray, dv: np.ndarray, nu: int, nv: int
) -> tuple[np.ndarray, np.ndarray]:
    """A planar grid of ``nu x nv`` quads, 4 own vertices each (so each cell gets its own colour)."""
    i, j = np.meshgrid(np.arange(nu), np.arange(nv), indexing="ij")
    corners = np.array([[0, 0], [1, 0], [1, 1], [0, 1]])
    a = (i.reshape(-1, 1) + corners[None, :, 0]) / nu
    b = (j.reshape(-1, 1) + corners[None, :, 1]) / nv
    verts = origin + a[..., None] * du + b[..., None] * dv  # (cells, 4, 3)
    base = 4 * np.arange(nu * nv)[:, None]
    faces = np.concatenate([base + np.array([0, 1, 2]), base + np.array([0, 2, 3])], axis=0)
    return verts.reshape(-1, 3), faces


def box_mesh(
    size: tuple[float, float, float],
    rng: np.random.Generator,
    cell: float = 8.0,
    palette: np.ndarray | None = None,
) -> trimesh.Trimesh:
    """A centred box (mm) whose six faces carry distinct checker textures (per-vertex colours)."""
    return _trimesh(*_box_arrays(size, rng, cell, palette))


def _box_arrays(
    size: tuple[float, float, float], rng: np.random.Generator, cell: float, palette: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    half = np.asarray(size, dtype=np.float64) / 2
    palette = rng.uniform(0.15, 1.0, (6, 2, 3)) if palette is None else palette
    verts, faces, colours = [], [], []
    offset = 0
    for f, (axis, sign) in enumerate([(0, 1), (0, -1), (1, 1), (1, -1), (2, 1), (2, -1)]):
        u_ax, v_ax = [a for a in range(3) if a != axis]
        origin = np.zeros(3)
        origin[axis] = sign * half[axis]
        origin[u_ax], origin[v_ax] = -half[u_ax], -half[v_ax]
        du, dv = np.zeros(3), np.zeros(3)
        du[u_ax], dv[v_ax] = 2 * half[u_ax], 2 * half[v_ax]
        nu = max(1, round(2 * half[u_ax] / cell))
        nv = max(1, round(2 * half[v_ax] / cell))
        v, fc = _grid_quads(origin, du, dv, nu, nv)
        i, j = np.meshgrid(np.arange(nu), np.arange(nv), indexing="ij")
        checker = ((i + j) % 2).reshape(-1)
        # a stripe along one edge breaks the in-face symmetry of the checker
        stripe = (i.reshape(-1) == 0) & (j.reshape(-1) < nv // 2)
        cell_rgb = palette[f][checker]
        cell_rgb[stripe] = 1.0 - palette[f][0]
        verts.append(v)
        faces.append(fc + offset)
        colours.append(np.repeat(cell_rgb, 4, axis=0))
        offset += len(v)
    return np.concatenate(verts), np.concatenate(faces), np.concatenate(colours)


def l_block_mesh(palette: np.ndarray, rng: np.random.Generator) -> trimesh.Trimesh:
    """An L-shaped block (mm), centred on its bounding box: an 84 x 56 x 28 slab with a 28 x 56 x 36 tower
    on its +x end. No rotation maps it onto itself, so its silhouette alone tells much of its pose."""
    slab_v, slab_f, slab_c = _box_arrays((84.0, 56.0, 28.0), rng, 8.0, palette)
    tower_v, tower_f, tower_c = _box_arrays((28.0, 56.0, 36.0), rng, 8.0, np.clip(palette * 1.25, 0, 1))
    verts = np.concatenate([slab_v + np.array([0.0, 0.0, -18.0]), tower_v + np.array([28.0, 0.0, 14.0])])
    faces = np.concatenate([slab_f, tower_f + len(slab_v)])
    return _trimesh(verts, faces, np.concatenate([slab_c, tower_c]))


def cylinder_mesh(
    radius: float,
    height: float,
    rng: np.random.Generator,
    segments: int = 48,
    bands: int = 8,
    band_colours: np.ndarray | None = None,
) -> trimesh.Trimesh:
    """A cylinder about z, centred; colours vary along z only (rotationally symmetric, top != bottom)."""
    band_colours = rng.uniform(0.1, 1.0, (bands + 2, 3)) if band_colours is None else band_colours
    ang = 2 * np.pi * np.arange(segments + 1) / segments
    # side: quads (segment i, band j)
    grid_i, grid_j = np.meshgrid(np.arange(segments), np.arange(bands), indexing="ij")
    i, j = grid_i.reshape(-1), grid_j.reshape(-1)
    corner_i = i[:, None] + np.array([0, 1, 1, 0])
    corner_j = j[:, None] + np.array([0, 0, 1, 1])
    z = -height / 2 + height * corner_j / bands
    side = np.stack([radius * np.cos(ang[corner_i]), radius * np.sin(ang[corner_i]), z], axis=-1).reshape(
        -1, 3
    )
    side_rgb = np.repeat(band_colours[j], 4, axis=0)
    # caps: concentric rings of quads, top (+z) and bottom (-z) in different colours
    rings = 3
    grid_ci, grid_cr = np.meshgrid(np.arange(segments), np.arange(rings), indexing="ij")
    ci, cr = grid_ci.reshape(-1), grid_cr.reshape(-1)
    cap_i = ci[:, None] + np.array([0, 1, 1, 0])
    cap_r = radius * (cr[:, None] + np.array([0, 0, 1, 1])) / rings
    ring_xy = np.stack([cap_r * np.cos(ang[cap_i]), cap_r * np.sin(ang[cap_i])], axis=-1).reshape(-1, 2)
    caps, caps_rgb = [], []
    for k, zc in enumerate((height / 2, -height / 2)):
        caps.append(np.concatenate([ring_xy, np.full((len(ring_xy), 1), zc)], axis=1))
        shade = np.where(cr % 2 == 0, 1.0, 0.55)[:, None] * band_colours[bands + k]
        caps_rgb.append(np.repeat(shade, 4, axis=0))
    verts = np.concatenate([side, *caps])
    n_quads = len(verts) // 4
    base = 4 * np.arange(n_quads)[:, None]
    faces = np.concatenate([base + np.array([0, 1, 2]), base + np.array([0, 2, 3])], axis=0)
    return _trimesh(verts, faces, np.concatenate([side_rgb, *caps_rgb]))


def _trimesh(verts: np.ndarray, faces: np.ndarray, rgb: np.ndarray) -> trimesh.Trimesh:
    rgba = np.concatenate([np.rint(np.clip(rgb, 0, 1) * 255), np.full((len(rgb), 1), 255)], axis=1)
    return trimesh.Trimesh(
        vertices=verts.astype(np.float32), faces=faces, vertex_colors=rgba.astype(np.uint8), process=False
    )


def mesh_arrays(mesh: trimesh.Trimesh) -> MeshArrays:
    """Render-ready arrays from a trimesh (vertex colours if present, else mid grey)."""
    verts = np.asarray(mesh.vertices, dtype=np.float32)
    colours = getattr(mesh.visual, "vertex_colors", None)
    if colours is None or len(colours) != len(verts):
        colours = np.full((len(verts), 4), 160, dtype=np.uint8)
    # normals from the triangle each vertex belongs to (flat shading of the quads)
    normals = np.asarray(mesh.vertex_normals, dtype=np.float32)
    return MeshArrays(verts, normals, np.asarray(colours, dtype=np.float32) / 255.0, np.asarray(mesh.faces))


def diameter(points: np.ndarray) -> float:
    """Largest distance between two points, searched over the convex hull's vertices."""
    pts = np.asarray(points, dtype=np.float64)
    if len(pts) > 64:
        with contextlib.suppress(QhullError):  # flat point sets: search all points
            pts = pts[ConvexHull(pts).vertices]
    return float(pdist(pts).max())
