"""Offscreen OpenGL rendering (moderngl, EGL) of vertex-coloured meshes under OpenCV camera intrinsics."""

from __future__ import annotations

from dataclasses import dataclass

import moderngl
import numpy as np

_VERTEX_SHADER = """
#version 330
uniform mat3 R;
uniform vec3 t;
uniform vec4 intrinsics;   // fx, fy, cx, cy
uniform vec2 size;         // width, height in pixels
uniform vec2 clip;         // near, far
in vec3 in_pos;
in vec3 in_normal;
in vec4 in_color;
out vec3 v_normal;
out vec3 v_pos;
out vec4 v_color;
void main() {
    vec3 p = R * in_pos + t;
    v_pos = p;
    v_normal = R * in_normal;
    v_color = in_color;
    float u = intrinsics.x * p.x + intrinsics.z * p.z;   // u * z (OpenCV pixel centres at integers)
    float v = intrinsics.y * p.y + intrinsics.w * p.z;
    float n = clip.x, f = clip.y;
    gl_Position = vec4((2.0 * u + p.z) / size.x - p.z, (2.0 * v + p.z) / size.y - p.z,
                       (p.z * (f + n) - 2.0 * f * n) / (f - n), p.z);
}
"""

_FRAGMENT_SHADER = """
#version 330
uniform vec3 light_dir;    // towards the light, camera frame
uniform vec3 light_color;
uniform float ambient;
uniform float specular;
uniform float flat_id;     // > 0: write this id instead of shading
in vec3 v_normal;
in vec3 v_pos;
in vec4 v_color;
out vec4 f_color;
void main() {
    if (flat_id > 0.0) { f_color = vec4(flat_id / 255.0, 0.0, 0.0, 1.0); return; }
    vec3 n = normalize(v_normal);
    vec3 view = normalize(-v_pos);
    if (dot(n, view) < 0.0) n = -n;
    float diffuse = max(dot(n, light_dir), 0.0);
    float spec = pow(max(dot(n, normalize(light_dir + view)), 0.0), 32.0) * specular;
    vec3 rgb = v_color.rgb * (ambient + diffuse * light_color) + spec * light_color;
    f_color = vec4(clamp(rgb, 0.0, 1.0), 1.0);
}
"""


@dataclass(frozen=True)
class MeshArrays:
    """Triangle soup for rendering: positions (V, 3) mm, normals (V, 3), colours (V, 4) in [0, 1]."""

    vertices: np.ndarray
    normals: np.ndarray
    colors: np.ndarray
    faces: np.ndarray


@dataclass(frozen=True)
class Light:
    direction: tuple[float, float, float] = (0.0, 0.0, -1.0)
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    ambient: float = 0.4
    specular: float = 0.2


_CONTEXT: moderngl.Context | None = None


def gl_context() -> moderngl.Context:
    """One headless EGL context per process (Mesa llvmpipe when there is no GPU)."""
    global _CONTEXT
    if _CONTEXT is None:
        # (moderngl's stub types every keyword setting as a dict)
        _CONTEXT = moderngl.create_standalone_context(backend="egl")  # type: ignore[arg-type]
    return _CONTEXT


class Renderer:
    """Renders posed meshes at ``supersample`` x the image size; returns colour, coverage and an id map."""

    def __init__(
        self, width: int, height: int, supersample: int = 3, near: float = 10.0, far: float = 10000.0
    ):
        if width <= 0 or height <= 0 or supersample <= 0:
            raise ValueError(
                f"width, height and supersample must be positive, got {width}, {height}, {supersample}"
            )
        self.width, self.height, self.ss = width, height, supersample
        self.ctx = gl_context()
        self.program = self.ctx.program(vertex_shader=_VERTEX_SHADER, fragment_shader=_FRAGMENT_SHADER)
        w, h = width * supersample, height * supersample
        self.fbo = self.ctx.framebuffer(
            color_attachments=[self.ctx.renderbuffer((w, h), 4, dtype="f4")],
            depth_attachment=self.ctx.depth_renderbuffer((w, h)),
        )
        self._uniform("size", (float(w), float(h)))
        self._uniform("clip", (near, far))

    def _uniform(self, name: str, value: float | tuple[float, ...]) -> None:
        uniform = self.program[name]
        assert isinstance(uniform, moderngl.Uniform), name
        uniform.value = value

    def _set_camera(self, K: np.ndarray) -> None:
        s = self.ss
        # Pixel (i) at scale s covers sub-pixels s*i .. s*i + s - 1: u_ss = s * u + (s - 1) / 2.
        fx, fy = K[0, 0] * s, K[1, 1] * s
        cx, cy = K[0, 2] * s + (s - 1) / 2, K[1, 2] * s + (s - 1) / 2
        self._uniform("intrinsics", (fx, fy, cx, cy))

    def _draw(self, mesh: MeshArrays, R: np.ndarray, t: np.ndarray, flat_id: int) -> None:
        data = np.concatenate([mesh.vertices, mesh.normals, mesh.colors], axis=1).astype("f4")
        vbo = self.ctx.buffer(data.tobytes())
        ibo = self.ctx.buffer(np.ascontiguousarray(mesh.faces, dtype="i4").tobytes())
        vao = self.ctx.vertex_array(
            self.program, [(vbo, "3f 3f 4f", "in_pos", "in_normal", "in_color")], index_buffer=ibo
        )
        self._uniform("R", tuple(float(v) for v in np.asarray(R).T.reshape(-1)))  # GLSL mat3: column-major
        self._uniform("t", tuple(float(v) for v in np.asarray(t).reshape(3)))
        self._uniform("flat_id", float(flat_id))
        vao.render(moderngl.TRIANGLES)
        vao.release()
        ibo.release()
        vbo.release()

    def _read(self) -> np.ndarray:
        w, h = self.width * self.ss, self.height * self.ss
        return np.frombuffer(self.fbo.read(components=4, dtype="f4"), dtype=np.float32).reshape(h, w, 4)

    def render(
        self, objects: list[tuple[MeshArrays, np.ndarray, np.ndarray]], K: np.ndarray, light: Light
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Shade ``objects`` (mesh, R, t); returns colour (H, W, 3) in [0, 1] premultiplied by coverage,
        coverage (H, W) and the supersampled id map (H*s, W*s) uint8 (0 = background, i + 1 = object i)."""
        self.fbo.use()
        self.ctx.enable(moderngl.DEPTH_TEST)
        self._set_camera(np.asarray(K, dtype=np.float64))
        d = np.asarray(light.direction, dtype=np.float64)
        self._uniform("light_dir", tuple(float(v) for v in d / np.linalg.norm(d)))
        self._uniform("light_color", tuple(float(c) for c in light.color))
        self._uniform("ambient", float(light.ambient))
        self._uniform("specular", float(light.specular))
        self.fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        for mesh, R, t in objects:
            self._draw(mesh, R, t, 0)
        rgba = self._read()
        self.fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        for i, (mesh, R, t) in enumerate(objects):
            self._draw(mesh, R, t, i + 1)
        ids = np.rint(self._read()[..., 0] * 255).astype(np.uint8)
        colour = self.downsample(rgba[..., :3] * rgba[..., 3:4])
        coverage = self.downsample(rgba[..., 3])
        return colour, coverage, ids

    def silhouette(self, mesh: MeshArrays, R: np.ndarray, t: np.ndarray, K: np.ndarray) -> np.ndarray:
        """Supersampled binary silhouette (H*s, W*s) of one mesh alone."""
        self.fbo.use()
        self.ctx.enable(moderngl.DEPTH_TEST)
        self._set_camera(np.asarray(K, dtype=np.float64))
        self.fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        self._draw(mesh, R, t, 1)
        return self._read()[..., 3] > 0.5

    def downsample(self, image: np.ndarray) -> np.ndarray:
        """Box-filter a supersampled (H*s, W*s, ...) array to (H, W, ...)."""
        s = self.ss
        shape = (self.height, s, self.width, s, *image.shape[2:])
        return image.reshape(shape).mean(axis=(1, 3))

    def release(self) -> None:
        self.fbo.release()
        self.program.release()
