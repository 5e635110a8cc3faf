"""Procedurally ray-cast indoor scenes with exact depth: the default data, so `fit` runs offline.

Each scene is a room (floor, ceiling, back and side walls) with spheres and boxes standing on the
floor, seen by a pinhole camera of random height and pitch. Pixels are shaded Lambertian under a
directional light with distance falloff, and surfaces carry textures whose size is fixed in the
world (floor tiles, wall stripes), so perspective, texture gradient, occlusion and shading all
carry depth, as in real photos. Depth is the exact camera z of the nearest hit. Scene i is always
the same image (seeded by `seed + i`), so runs are reproducible without files on disk.
"""

from __future__ import annotations

import numpy as np

from tasks.depth.datasets.base import DepthDataset


def _hit_plane(dirs: np.ndarray, axis: int, offset: float) -> np.ndarray:
    # Ray p = t * d from the origin hits the plane p[axis] = offset at t = offset / d[axis].
    with np.errstate(divide="ignore", invalid="ignore"):
        t = offset / dirs[..., axis]
    return np.where(t > 1e-6, t, np.inf)


def _hit_sphere(dirs: np.ndarray, center: np.ndarray, radius: float) -> np.ndarray:
    a = (dirs**2).sum(-1)
    b = -2.0 * (dirs @ center)
    c = center @ center - radius**2
    disc = b**2 - 4 * a * c
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / (2 * a)
    return np.where((disc > 0) & (t > 1e-6), t, np.inf)


def _hit_box(dirs: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Slab method; returns the entry distance and the axis of the entry face.
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = lo / dirs, hi / dirs
    tmin, tmax = np.minimum(t1, t2), np.maximum(t1, t2)
    tmin = np.nan_to_num(tmin, nan=-np.inf)
    tmax = np.nan_to_num(tmax, nan=np.inf)
    t_near, t_far = tmin.max(-1), tmax.min(-1)
    hit = (t_near <= t_far) & (t_near > 1e-6)
    return np.where(hit, t_near, np.inf), tmin.argmax(-1)


def render_scene(seed: int, height: int = 128, width: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """Render one scene.

    Args:
        seed: Chooses the scene.
        height: Image rows.
        width: Image columns.

    Returns:
        image (H, W, 3) uint8 and depth (H, W) float32 in metres (camera z), within about 0.3 to 10 m.
    """
    rng = np.random.default_rng(seed)
    # Camera: y down, z forward; the focal length is the sensor's, so rays have camera z = 1 and the
    # ray parameter t of a hit is its depth.
    focal = width * rng.uniform(0.8, 1.1)
    v, u = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    cam = np.stack([(u - width / 2) / focal, (v - height / 2) / focal, np.ones_like(u)], -1)  # (H, W, 3)
    pitch = np.deg2rad(rng.uniform(5, 25))  # looking down
    yaw = np.deg2rad(rng.uniform(-15, 15))
    rot_x = np.array([[1, 0, 0], [0, np.cos(pitch), np.sin(pitch)], [0, -np.sin(pitch), np.cos(pitch)]])
    rot_y = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
    dirs = cam @ (rot_y @ rot_x).T  # world directions, camera at the origin, world y down

    cam_height = rng.uniform(1.0, 1.8)
    room_height = rng.uniform(2.4, 3.2)
    back, left, right = rng.uniform(4.5, 8.0), -rng.uniform(1.5, 3.5), rng.uniform(1.5, 3.5)
    # Surfaces: (t, normal pointing into the room, kind).
    surfaces = [
        (_hit_plane(dirs, 1, cam_height), (0, -1, 0), "floor"),
        (_hit_plane(dirs, 1, cam_height - room_height), (0, 1, 0), "ceiling"),
        (_hit_plane(dirs, 2, back), (0, 0, -1), "wall"),
        (_hit_plane(dirs, 0, left), (1, 0, 0), "wall"),
        (_hit_plane(dirs, 0, right), (-1, 0, 0), "wall"),
    ]
    t_best = np.full(dirs.shape[:2], np.inf)
    normal = np.zeros_like(dirs)
    albedo = np.zeros_like(dirs)
    floor_a, floor_b = rng.uniform(0.3, 0.9, 3), rng.uniform(0.1, 0.5, 3)
    wall_a, wall_b = rng.uniform(0.4, 0.9, 3), rng.uniform(0.2, 0.7, 3)
    ceiling = rng.uniform(0.6, 0.95, 3)
    tile = rng.uniform(0.3, 0.7)
    stripe = rng.uniform(0.2, 0.5)
    for t, n, kind in surfaces:
        closer = t < t_best
        t_best = np.where(closer, t, t_best)
        normal[closer] = n
        p = dirs[closer] * t[closer, None]
        if kind == "floor":  # checkerboard tiles of fixed world size: a strong perspective cue
            check = (np.floor(p[:, 0] / tile) + np.floor(p[:, 2] / tile)) % 2
            albedo[closer] = np.where(check[:, None] > 0, floor_a, floor_b)
        elif kind == "wall":  # vertical stripes along the wall
            coord = p[:, 0] + p[:, 2]
            albedo[closer] = np.where((np.floor(coord / stripe) % 2)[:, None] > 0, wall_a, wall_b)
        else:
            albedo[closer] = ceiling

    for _ in range(rng.integers(2, 6)):  # spheres resting on the floor
        r = rng.uniform(0.2, 0.7)
        center = np.array([rng.uniform(left + r, right - r), cam_height - r, rng.uniform(1.5, back - r)])
        t = _hit_sphere(dirs, center, r)
        closer = t < t_best
        t_best = np.where(closer, t, t_best)
        p = dirs[closer] * t[closer, None]
        normal[closer] = (p - center) / r
        albedo[closer] = rng.uniform(0.2, 1.0, 3)
    for _ in range(rng.integers(1, 4)):  # boxes on the floor
        size = rng.uniform([0.3, 0.3, 0.3], [1.2, 1.5, 1.2])
        x0, z0 = rng.uniform(left, right - size[0]), rng.uniform(1.5, back - size[2])
        lo = np.array([x0, cam_height - size[1], z0])
        t, axis = _hit_box(dirs, lo, lo + size)
        closer = t < t_best
        t_best = np.where(closer, t, t_best)
        face = np.zeros((int(closer.sum()), 3))
        face[np.arange(len(face)), axis[closer]] = -np.sign(dirs[closer][np.arange(len(face)), axis[closer]])
        normal[closer] = face
        base = rng.uniform(0.2, 1.0, 3)
        p = dirs[closer] * t[closer, None]
        # Fine grain on boxes, so their faces are not flat colour.
        grain = 0.85 + 0.15 * np.sin(p.sum(-1) * rng.uniform(8, 20))
        albedo[closer] = base * grain[:, None]

    light = np.array([rng.uniform(-0.5, 0.5), -1.0, rng.uniform(-0.8, -0.2)])
    light /= np.linalg.norm(light)
    lambert = np.clip((normal * light).sum(-1), 0, None)
    falloff = 1.0 / (1.0 + 0.015 * t_best**2)  # light from a source near the camera fades with distance
    shade = (0.35 + 0.65 * lambert) * (0.55 + 0.45 * falloff)
    image = albedo * shade[..., None] + rng.normal(0, 0.01, albedo.shape)
    image = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    return image, t_best.astype(np.float32)


class SyntheticDepthScenes(DepthDataset):
    """`length` rendered scenes; item i is `render_scene(seed + i)`.

    Args:
        length: Number of scenes.
        seed: Offset of the scene seeds (use disjoint ranges for train and validation).
        height: Image rows.
        width: Image columns.
        transform: See `DepthDataset`.
    """

    def __init__(self, length: int, seed: int = 0, height: int = 128, width: int = 160, transform=None) -> None:
        super().__init__(transform)
        self.length, self.seed, self.height, self.width = length, seed, height, width

    def __len__(self) -> int:
        return self.length

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str, None]:
        """Render scene `seed + index`."""
        image, depth = render_scene(self.seed + index, self.height, self.width)
        return image, depth, f"synthetic_{self.seed + index:06d}", None
