"""Procedural synthetic RGB-D scenes with EXACT depth, for training and for tests.

A pinhole camera is ray-cast (vectorised numpy, one ray per pixel centre) into a room: a
ground plane, a back wall, layered fronto-parallel cards, slanted planes, boxes, spheres,
and thin poles and wires whose radius is chosen to be 1.2-3 px wide at the rendered
resolution (so they vanish when the image is downsampled, as real thin structures do).

Depth is the camera-frame z of the first hit, computed in float64 from the analytic
intersection and stored as float32 metres; it is exact (no blur, no anti-aliasing).
The RGB image is deliberately NOT a depth rendering: surfaces carry stripes, checkers,
1/f solid noise, gradients and flat "decals" (posters, tiles, fake shading) whose edges do
not coincide with depth edges, some objects share the wall's material (depth edge with no
colour edge), shading follows surface normals, ground shadows are painted, and the image
gets mild optics blur and sensor noise. Texture copied into a depth prediction is
therefore always an artefact the refiner should learn to ignore.

Pixel convention: pixel (row v, column u) has its centre at (u, v); its ray is
``((u - cx) / f, (v - cy) / f, 1)`` in the camera frame (x right, y down, z forward).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from ..io.atomic import atomic_write

KINDS = ("wall", "ground", "card", "slanted", "box", "sphere", "pole", "wire")


@dataclass(frozen=True)
class SyntheticScene:
    """One rendered scene.

    ``labels`` gives each pixel's object id and ``kinds[id]`` its kind (see :data:`KINDS`);
    ``planes`` holds the camera-frame wall and ground planes as ``(normal, offset)`` with
    ``normal . X = offset``, so their depth at a pixel is ``offset / (normal . ray)``.
    """

    rgb: np.ndarray
    depth: np.ndarray
    intrinsics: np.ndarray
    labels: np.ndarray
    kinds: tuple[str, ...]
    planes: dict[str, tuple[np.ndarray, float]] = field(default_factory=dict)


# ------------------------------------------------------------------------ geometry


@dataclass
class _Material:
    c1: np.ndarray
    c2: np.ndarray
    pattern: str
    period: float
    angle: float
    sharpness: float
    noise: float
    decals: list[tuple[float, float, float, float, np.ndarray, bool]] = field(default_factory=list)


@dataclass
class _Object:
    """A primitive in the camera frame. ``params`` depend on ``kind``."""

    kind: str
    material: _Material
    params: dict


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _intersect(obj: _Object, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Ray parameter t (= camera z, since the ray's z is 1) of the first hit, inf on a miss."""
    p = obj.params
    inf = np.inf
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if obj.kind in ("wall", "ground"):
            n, c = p["n"], p["c"]
            t = c / (n[0] * dx + n[1] * dy + n[2])
            return np.where(t > 0, t, inf)
        if obj.kind in ("card", "slanted"):
            n, o, e1, e2 = p["n"], p["o"], p["e1"], p["e2"]
            t = (n @ o) / (n[0] * dx + n[1] * dy + n[2])
            qx, qy, qz = t * dx - o[0], t * dy - o[1], t - o[2]
            s = (qx * e1[0] + qy * e1[1] + qz * e1[2]) / p["a"]
            r = (qx * e2[0] + qy * e2[1] + qz * e2[2]) / p["b"]
            inside = (s * s + r * r <= 1.0) if p["ellipse"] else (np.abs(s) <= 1.0) & (np.abs(r) <= 1.0)
            return np.where(inside & (t > 0), t, inf)
        if obj.kind == "sphere":
            c, rad = p["c"], p["r"]
            a = dx * dx + dy * dy + 1.0
            b = c[0] * dx + c[1] * dy + c[2]
            disc = b * b - a * (c @ c - rad * rad)
            t = (b - np.sqrt(disc)) / a
            return np.where((disc >= 0) & (t > 0), t, inf)
        if obj.kind == "box":
            rot, c, half = p["R"], p["c"], p["h"]
            o_local = -(rot.T @ c)
            t_near = np.full(dx.shape, -inf)
            t_far = np.full(dx.shape, inf)
            for i in range(3):
                d_i = rot[0, i] * dx + rot[1, i] * dy + rot[2, i]
                t1 = (-half[i] - o_local[i]) / d_i
                t2 = (half[i] - o_local[i]) / d_i
                t_near = np.maximum(t_near, np.minimum(t1, t2))
                t_far = np.minimum(t_far, np.maximum(t1, t2))
            hit = (t_near <= t_far) & (t_near > 0)
            return np.where(hit, t_near, inf)
        # cylinder: pole or wire
        a0, u, rad, half_len = p["a0"], p["u"], p["r"], p["L"]
        du = dx * u[0] + dy * u[1] + u[2]
        dpx, dpy, dpz = dx - du * u[0], dy - du * u[1], 1.0 - du * u[2]
        w = -a0 - (-a0 @ u) * u
        qa = dpx * dpx + dpy * dpy + dpz * dpz
        qb = 2.0 * (dpx * w[0] + dpy * w[1] + dpz * w[2])
        qc = w @ w - rad * rad
        disc = qb * qb - 4.0 * qa * qc
        t = (-qb - np.sqrt(disc)) / (2.0 * qa)
        axial = (t * dx - a0[0]) * u[0] + (t * dy - a0[1]) * u[1] + (t - a0[2]) * u[2]
        return np.where((disc >= 0) & (t > 0) & (np.abs(axial) <= half_len), t, inf)


def _surface(obj: _Object, P: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit normals (N,3) and texture coordinates s, t in metres for hit points P (N,3)."""
    p = obj.params
    if obj.kind in ("wall", "ground", "card", "slanted"):
        q = P - p["o"]
        n = np.broadcast_to(p["n"], P.shape)
        return n, q @ p["e1"], q @ p["e2"]
    if obj.kind == "sphere":
        q = P - p["c"]
        n = q / p["r"]
        lon = np.arctan2(n[:, 0], n[:, 2]) * p["r"]
        lat = np.arcsin(np.clip(n[:, 1], -1, 1)) * p["r"]
        return n, lon, lat
    if obj.kind == "box":
        local = (P - p["c"]) @ p["R"]
        rel = np.abs(local) / p["h"]
        face = np.argmax(rel, axis=1)
        n_local = np.zeros_like(local)
        n_local[np.arange(len(P)), face] = np.sign(local[np.arange(len(P)), face])
        other = np.array([[1, 2], [0, 2], [0, 1]])[face]
        s = np.take_along_axis(local, other[:, :1], axis=1)[:, 0]
        t = np.take_along_axis(local, other[:, 1:], axis=1)[:, 0]
        return n_local @ p["R"].T, s, t
    q = P - p["a0"]
    axial = q @ p["u"]
    radial = q - axial[:, None] * p["u"]
    n = radial / np.maximum(np.linalg.norm(radial, axis=1, keepdims=True), 1e-12)
    ref = _unit(np.cross(p["u"], [0.0, 0.0, 1.0]) + 1e-9)
    angle = np.arctan2(n @ np.cross(p["u"], ref), n @ ref) * p["r"]
    return n, angle, axial


# ------------------------------------------------------------------------ texture


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    hue = rng.uniform(0, 1)
    sat = rng.uniform(0.05, 0.85)
    val = rng.uniform(0.25, 0.95)
    k = (np.array([5.0, 3.0, 1.0]) + hue * 6) % 6
    return val * (1 - sat * np.clip(np.minimum(k, 4 - k), 0, 1))


def _random_material(rng: np.random.Generator, planar: bool) -> _Material:
    c1 = _random_colour(rng)
    c2 = _random_colour(rng) if rng.uniform() < 0.7 else np.clip(c1 * rng.uniform(0.5, 1.5), 0, 1)
    pattern = rng.choice(["flat", "stripes", "checker", "gradient", "noise"], p=[0.15, 0.25, 0.2, 0.15, 0.25])
    decals = []
    if planar:
        for _ in range(int(rng.integers(0, 6))):
            decals.append(
                (
                    rng.uniform(-2.5, 2.5),
                    rng.uniform(-1.0, 2.5),
                    rng.uniform(0.05, 0.8),
                    rng.uniform(0.05, 0.8),
                    _random_colour(rng),
                    bool(rng.uniform() < 0.3),
                )
            )
    return _Material(
        c1=c1,
        c2=c2,
        pattern=str(pattern),
        period=float(np.exp(rng.uniform(np.log(0.03), np.log(0.5)))),
        angle=float(rng.uniform(0, np.pi)),
        sharpness=float(rng.uniform(1.0, 8.0)),
        noise=float(rng.uniform(0.05, 0.35)),
        decals=decals,
    )


def _pattern(m: _Material, s: np.ndarray, t: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Pattern value in [0, 1]; periodic patterns fade to grey where they would alias."""
    if m.pattern == "flat":
        return np.zeros_like(s)
    if m.pattern == "gradient":
        return np.clip(0.5 + (s * np.cos(m.angle) + t * np.sin(m.angle)) / (8 * m.period + 0.5), 0, 1)
    if m.pattern == "noise":
        return np.full_like(s, 0.5)
    fade = np.clip(m.period / (3.0 * footprint) - 1.0, 0.0, 1.0)
    k = 2 * np.pi / m.period
    if m.pattern == "stripes":
        wave = np.sin(k * (s * np.cos(m.angle) + t * np.sin(m.angle)))
    else:
        wave = np.sin(k * s) * np.sin(k * t)
    return 0.5 + 0.5 * fade * np.clip(wave * m.sharpness, -1, 1)


def _solid_noise(rng: np.random.Generator, P: np.ndarray, footprint: np.ndarray, n: int = 12) -> np.ndarray:
    """Band-limited ~1/f solid noise at 3-D points: random sinusoids with amplitude 1/|k|,
    each faded out where its wavelength nears the pixel footprint (no aliasing)."""
    freqs = np.exp(rng.uniform(np.log(2.0), np.log(250.0), n))
    dirs = rng.normal(size=(n, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    phases = rng.uniform(0, 2 * np.pi, n)
    P32 = P.astype(np.float32)
    blur = (footprint.astype(np.float32) / np.float32(np.pi)) ** 2
    out = np.zeros(len(P), dtype=np.float32)
    for f, d, ph in zip(freqs, dirs, phases):
        arg = P32 @ (f * d).astype(np.float32)
        arg += np.float32(ph)
        out += np.float32(1.0 / f) * np.exp(np.float32(-f * f) * blur) * np.sin(arg)
    return out.astype(np.float64) / (np.sum(1.0 / freqs) * 0.35)


def _image_noise_field(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth 1/f^2-power image-space field (illumination unevenness), unit std."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    radius = np.sqrt(fx * fx + fy * fy)
    radius[0, 0] = 1.0
    spectrum = (rng.normal(size=radius.shape) + 1j * rng.normal(size=radius.shape)) / radius
    spectrum[0, 0] = 0
    field_ = np.fft.irfft2(spectrum, s=(h, w))
    return field_ / (field_.std() + 1e-12)


# -------------------------------------------------------------------------- scene


def _camera_rotation(pitch: float) -> np.ndarray:
    """World (x right, y up, z forward) -> camera (x right, y down, z forward), looking down by ``pitch``."""
    c, s = np.cos(pitch), np.sin(pitch)
    return np.array([[1.0, 0.0, 0.0], [0.0, -c, -s], [0.0, -s, c]])


def _build_objects(rng: np.random.Generator, f: float, width: int, height: int) -> tuple[list[_Object], dict]:
    cam_h = rng.uniform(1.0, 1.8)
    pitch = np.deg2rad(rng.uniform(0.0, 12.0))
    R = _camera_rotation(pitch)
    C = np.array([0.0, cam_h, 0.0])

    def to_cam(point) -> np.ndarray:
        return R @ (np.asarray(point, float) - C)

    def dir_cam(vector) -> np.ndarray:
        return R @ np.asarray(vector, float)

    def plane(normal, origin, e1, e2) -> dict:
        """Camera-frame plane params; ``c`` makes ``n . X = c`` hold at the origin."""
        n, o = dir_cam(normal), to_cam(origin)
        return {"n": n, "o": o, "c": float(n @ o), "e1": dir_cam(e1), "e2": dir_cam(e2)}

    tan_x = width / (2 * f)
    wall_z = rng.uniform(5.0, 14.0)
    light = dir_cam(_unit(np.array([rng.uniform(-1, 1), rng.uniform(0.6, 1.6), rng.uniform(-1.0, 0.3)])))

    wall_mat = _random_material(rng, planar=True)
    objects = [
        _Object("wall", wall_mat, plane([0, 0, 1], [0, cam_h, wall_z], [1, 0, 0], [0, 1, 0])),
        _Object("ground", _random_material(rng, planar=True), plane([0, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 1])),
    ]

    def material(planar: bool) -> _Material:
        return wall_mat if rng.uniform() < 0.15 else _random_material(rng, planar)

    def place(z_lo: float, margin: float = 0.5) -> tuple[float, float]:
        z = rng.uniform(z_lo, wall_z - margin)
        return rng.uniform(-0.9, 0.9) * z * tan_x, z

    shadows = []
    for _ in range(int(rng.integers(2, 6))):
        x, z = place(1.5, 0.3)
        a, b = rng.uniform(0.15, 0.8), rng.uniform(0.15, 1.0)
        y0 = 0.0 if rng.uniform() < 0.5 else rng.uniform(0.2, 1.5)
        params = plane([0, 0, -1], [x, y0 + b, z], [1, 0, 0], [0, 1, 0])
        params.update(a=a, b=b, ellipse=bool(rng.uniform() < 0.25))
        objects.append(_Object("card", material(True), params))
    for _ in range(int(rng.integers(1, 4))):
        x, z = place(1.5)
        yaw, tilt = np.deg2rad(rng.uniform(-65, 65)), np.deg2rad(rng.uniform(-55, 55))
        n = np.array([np.sin(yaw) * np.cos(tilt), np.sin(tilt), -np.cos(yaw) * np.cos(tilt)])
        e1 = _unit(np.cross([0.0, 1.0, 0.0], n))
        e2 = np.cross(n, e1)
        a, b = rng.uniform(0.2, 1.0), rng.uniform(0.2, 1.0)
        params = plane(n, [x, rng.uniform(0.3, 2.0), z], e1, e2)
        params.update(a=a, b=b, ellipse=bool(rng.uniform() < 0.2))
        objects.append(_Object("slanted", material(True), params))
    for _ in range(int(rng.integers(1, 4))):
        x, z = place(1.8, 1.0)
        half = rng.uniform(0.1, 0.6, 3)
        yaw = rng.uniform(0, np.pi / 2)
        rot_w = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
        params = {"R": R @ rot_w, "c": to_cam([x, half[1], z]), "h": half}
        objects.append(_Object("box", material(False), params))
        shadows.append((x, z, half[1], max(half[0], half[2])))
    for _ in range(int(rng.integers(1, 4))):
        x, z = place(1.5)
        r = rng.uniform(0.1, 0.6)
        y = r if rng.uniform() < 0.6 else rng.uniform(r, 2.0)
        objects.append(_Object("sphere", material(False), {"c": to_cam([x, y, z]), "r": r}))
        shadows.append((x, z, y, r))
    for _ in range(int(rng.integers(1, 4))):
        x, z = place(1.5)
        top = rng.uniform(1.0, 3.5)
        radius = rng.uniform(1.2, 3.0) * z / (2 * f)
        params = {"a0": to_cam([x, top / 2, z]), "u": dir_cam([0, 1, 0]), "r": radius, "L": top / 2}
        objects.append(_Object("pole", material(False), params))
        shadows.append((x, z, top / 2, 4 * radius))
    for _ in range(int(rng.integers(1, 4))):
        _, z = place(1.5)
        y_img = rng.uniform(-0.85, 0.3) * (height / (2 * f)) * z
        phi = rng.uniform(-0.25, 0.25)
        u = _unit(np.array([np.cos(phi), np.sin(phi), rng.uniform(-0.1, 0.1)]))
        radius = rng.uniform(1.2, 3.0) * z / (2 * f)
        params = {"a0": to_cam([0.0, cam_h - y_img, z]), "u": dir_cam(u), "r": radius, "L": 2 * z * tan_x + 2}
        objects.append(_Object("wire", material(False), params))
    info = {"R": R, "C": C, "light": light, "shadows": shadows}
    return objects, info


def make_scene(height: int = 384, width: int = 512, seed: int = 0) -> SyntheticScene:
    """Render one random scene (deterministic for ``seed``) at ``height`` x ``width``."""
    if height < 8 or width < 8:
        raise ValueError(f"synthetic scenes need at least 8x8 pixels, got {height}x{width}")
    rng = np.random.default_rng(seed)
    f = width * rng.uniform(0.75, 1.1)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    K = np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])
    objects, info = _build_objects(rng, f, width, height)

    dx = np.broadcast_to((np.arange(width, dtype=np.float64) - cx) / f, (height, width))
    dy = np.broadcast_to(((np.arange(height, dtype=np.float64) - cy) / f)[:, None], (height, width))
    depth = np.full((height, width), np.inf)
    labels = np.zeros((height, width), dtype=np.int32)
    for i, obj in enumerate(objects):
        t = _intersect(obj, dx, dy)
        labels[t < depth] = i
        np.minimum(depth, t, out=depth)
    if not np.all(np.isfinite(depth)):
        raise RuntimeError("synthetic scene has pixels that hit nothing (wall plane misconfigured)")

    P = np.stack([dx * depth, dy * depth, depth], axis=-1).reshape(-1, 3)
    flat_labels = labels.ravel()
    footprint = depth.ravel() / f
    offsets = rng.uniform(-50, 50, size=(len(objects), 3))
    noise = _solid_noise(rng, P + offsets[flat_labels], footprint)
    colour = np.zeros((P.shape[0], 3))
    shade = np.ones(P.shape[0])
    ambient = rng.uniform(0.3, 0.6)
    for i, obj in enumerate(objects):
        idx = np.flatnonzero(flat_labels == i)
        if idx.size == 0:
            continue
        pts = P[idx]
        normal, s, t = _surface(obj, pts)
        facing = np.sign(np.einsum("ij,ij->i", normal, -pts))
        normal = normal * np.where(facing == 0, 1, facing)[:, None]
        m = obj.material
        v = _pattern(m, s, t, footprint[idx])
        c = m.c1[None, :] * (1 - v[:, None]) + m.c2[None, :] * v[:, None]
        c = c * (1 + m.noise * noise[idx, None] * (2.0 if m.pattern == "noise" else 1.0))
        for s0, t0, hw, hh, dc, ramp in m.decals:
            inside = (np.abs(s - s0) <= hw) & (np.abs(t - t0) <= hh)
            if ramp:  # a painted shading ramp: looks like a curved surface, is flat
                tone = 0.6 + 0.8 * np.clip((t[inside] - t0 + hh) / (2 * hh), 0, 1)
                c[inside] = dc[None, :] * tone[:, None]
            else:
                c[inside] = dc
        colour[idx] = c
        shade[idx] = ambient + (1 - ambient) * np.clip(normal @ info["light"], 0, 1)
        if obj.kind == "ground":
            world = (pts @ info["R"]) + info["C"]
            light_w = info["R"].T @ info["light"]
            for sx, sz, sh, sr in info["shadows"]:
                lx = sx - light_w[0] / max(light_w[1], 0.2) * sh
                lz = sz - light_w[2] / max(light_w[1], 0.2) * sh
                d2 = (world[:, 0] - lx) ** 2 + (world[:, 2] - lz) ** 2
                shade[idx] *= 1 - 0.5 * np.exp(-d2 / (sr * sr + 1e-6))

    exposure = rng.uniform(0.85, 1.15)
    img = (colour * shade[:, None] * exposure).reshape(height, width, 3)
    img *= 1 + 0.08 * _image_noise_field(rng, height, width)[:, :, None]
    img = gaussian_filter(img, sigma=(0.5, 0.5, 0))
    img += rng.normal(0, 1.5 / 255, img.shape)
    rgb = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    planes = {o.kind: (o.params["n"].copy(), float(o.params["c"])) for o in objects[:2]}
    return SyntheticScene(
        rgb=rgb,
        depth=depth.astype(np.float32),
        intrinsics=K,
        labels=labels,
        kinds=tuple(o.kind for o in objects),
        planes=planes,
    )


def write_synthetic_dataset(
    root: str | os.PathLike,
    count: int,
    height: int = 384,
    width: int = 512,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Render ``count`` scenes into ``root`` in the ``generic`` layout and return ``root``.

    Writes ``rgb/NNNNN.png``, ``gt/NNNNN.npy`` (float32 depth, metres) and, last,
    ``dataset.json`` (``gt_kind: "depth"``, per-sample intrinsics, generator settings).
    Scene ``i`` uses a seed derived from ``(seed, i)``, so datasets are reproducible and a
    larger ``count`` extends a smaller one. A non-empty ``root`` is refused unless
    ``overwrite=True``, which replaces only ``rgb/``, ``gt/`` and ``dataset.json``.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a folder")
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{root} is not empty; pass overwrite=True to replace its synthetic dataset")
        for sub in ("rgb", "gt"):
            if (root / sub).is_dir():
                shutil.rmtree(root / sub)
        (root / "dataset.json").unlink(missing_ok=True)
    (root / "rgb").mkdir(parents=True, exist_ok=True)
    (root / "gt").mkdir(parents=True, exist_ok=True)
    intrinsics: dict[str, list[list[float]]] = {}
    for i in range(count):
        scene_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        scene = make_scene(height, width, scene_seed)
        name = f"{i:05d}"
        atomic_write(root / "rgb" / f"{name}.png", lambda fh: Image.fromarray(scene.rgb).save(fh, format="PNG"))
        atomic_write(root / "gt" / f"{name}.npy", lambda fh: np.save(fh, scene.depth))
        intrinsics[name] = scene.intrinsics.tolist()
    spec = {
        "gt_kind": "depth",
        "units": "m",
        "intrinsics": intrinsics,
        "generator": {"module": __name__, "count": count, "height": height, "width": width, "seed": seed},
    }
    text = json.dumps(spec, indent=1).encode("utf-8")
    atomic_write(root / "dataset.json", lambda fh: fh.write(text))
    return root
