"""Procedural scenes as data: an axis-aligned room, boxes, spheres and vertical cylinders, materials and lights.

World frame: z up, floor at z = 0, metres. Every random choice comes from the generator passed in, so a seed
fixes the scene.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.spatial.transform import Rotation

Pattern = Literal["checker", "stripes", "noise", "grid", "dots"]
PATTERNS: tuple[Pattern, ...] = ("checker", "stripes", "noise", "grid", "dots")

# Room faces in the order the renderer indexes them: the face hit by a ray leaving through the `axis` slab on
# the `positive` side is ROOM_FACES.index((axis, positive)).
ROOM_FACES: tuple[tuple[int, bool], ...] = ((0, False), (0, True), (1, False), (1, True), (2, False), (2, True))


@dataclass(frozen=True)
class Material:
    """A solid (3-D) texture: a pattern mixing a dark and a bright colour, plus fine speckle.

    Solid textures need no UV mapping and agree across views, which is what matching needs. Colours are RGB
    in [0, 1]; `frequency` is pattern cycles per metre.
    """

    dark: np.ndarray  # [3]
    bright: np.ndarray  # [3]
    pattern: Pattern
    frequency: float
    rotation: np.ndarray  # [3, 3] orientation of the pattern lattice (never axis-aligned: no flicker on walls)
    offset: np.ndarray  # [3] lattice offset in cells, so a wall plane never sits exactly on a cell boundary
    speckle: float  # amplitude of the per-cell brightness noise, 0..1
    speckle_cell_m: float  # size of a speckle cell; at least a few cm so it survives 112-pixel renders
    salt: int  # hash salt: two materials with the same pattern still look different


@dataclass(frozen=True)
class Scene:
    """Everything the renderer needs; arrays are float64."""

    room_min: np.ndarray  # [3]
    room_max: np.ndarray  # [3]
    materials: tuple[Material, ...]
    room_material: np.ndarray  # [6] int, material index per face (ROOM_FACES order)
    box_min: np.ndarray  # [B, 3]
    box_max: np.ndarray  # [B, 3]
    box_material: np.ndarray  # [B] int
    sphere_centre: np.ndarray  # [N, 3]
    sphere_radius: np.ndarray  # [N]
    sphere_material: np.ndarray  # [N] int
    cylinder_centre_xy: np.ndarray  # [C, 2]
    cylinder_radius: np.ndarray  # [C]
    cylinder_top: np.ndarray  # [C] height of the top cap; cylinders stand on the floor
    cylinder_material: np.ndarray  # [C] int
    light_direction: np.ndarray  # [3] unit vector the directional light travels along
    ambient: float
    point_light: np.ndarray  # [3] position of a point light
    point_light_strength: float

    @property
    def num_objects(self) -> int:
        return len(self.box_min) + len(self.sphere_radius) + len(self.cylinder_radius)


@dataclass(frozen=True)
class Room:
    """The part of a scene chosen before the camera path: bounds, wall materials and lighting."""

    room_min: np.ndarray
    room_max: np.ndarray
    materials: tuple[Material, ...]
    light_direction: np.ndarray
    ambient: float
    point_light: np.ndarray
    point_light_strength: float


def sample_material(rng: np.random.Generator) -> Material:
    """A random high-contrast material: a dark colour (value <= 0.3) paired with a bright one (value >= 0.7)."""
    hue_dark, hue_bright = rng.uniform(0, 1, size=2)
    dark = _hsv_to_rgb(hue_dark, rng.uniform(0.3, 1.0), rng.uniform(0.05, 0.3))
    bright = _hsv_to_rgb(hue_bright, rng.uniform(0.0, 0.6), rng.uniform(0.7, 1.0))
    pattern = PATTERNS[rng.integers(len(PATTERNS))]
    # cycles per metre: cells of ~15-60 cm stay several pixels wide at room distances in a 112-pixel image
    frequency = float(rng.uniform(1.5, 5.0)) if pattern != "noise" else float(rng.uniform(1.5, 4.0))
    return Material(
        dark=dark,
        bright=bright,
        pattern=pattern,
        frequency=frequency,
        rotation=Rotation.random(random_state=rng).as_matrix(),
        offset=rng.uniform(0, 1, 3),
        speckle=float(rng.uniform(0.15, 0.35)),
        speckle_cell_m=float(rng.uniform(0.04, 0.08)),
        salt=int(rng.integers(1, 2**31 - 1)),
    )


def _hsv_to_rgb(hue: float, saturation: float, value: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + hue * 6.0) % 6.0
    return value - value * saturation * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def sample_room(rng: np.random.Generator) -> Room:
    """Room of 3-8 m x 3-8 m x 2.4-3.4 m with six face materials and a random light setup."""
    size = np.array([rng.uniform(3.0, 8.0), rng.uniform(3.0, 8.0), rng.uniform(2.4, 3.4)])
    origin = np.array([rng.uniform(-2, 2), rng.uniform(-2, 2), 0.0])
    light = np.array([rng.uniform(-1, 1), rng.uniform(-1, 1), -rng.uniform(0.5, 1.5)])
    return Room(
        room_min=origin,
        room_max=origin + size,
        materials=tuple(sample_material(rng) for _ in ROOM_FACES),
        light_direction=light / np.linalg.norm(light),
        ambient=float(rng.uniform(0.35, 0.6)),
        point_light=origin + size * np.array([rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), 0.9]),
        point_light_strength=float(rng.uniform(0.0, 0.6)),
    )


def _distance_to_boxes(points: np.ndarray, box_min: np.ndarray, box_max: np.ndarray) -> np.ndarray:
    """Euclidean distance from each of [M, 3] points to one axis-aligned box (0 inside)."""
    gap = np.maximum(np.maximum(box_min - points, points - box_max), 0.0)
    return np.linalg.norm(gap, axis=-1)


def sample_scene(
    rng: np.random.Generator,
    room: Room,
    camera_centres: np.ndarray,
    *,
    num_objects: int | None = None,
    clearance_m: float = 0.45,
) -> Scene:
    """Place boxes, spheres and cylinders in `room`, none closer than `clearance_m` to any camera centre.

    Args:
        camera_centres: [S, 3] world positions of the cameras (the path is chosen first).
        num_objects: objects to try to place (default 4-10); candidates that collide with the path are redrawn
            a bounded number of times, so a crowded path can end with fewer.
    """
    if num_objects is None:
        num_objects = int(rng.integers(4, 11))
    materials = list(room.materials)
    size = room.room_max - room.room_min
    boxes, spheres, cylinders = [], [], []
    for _ in range(num_objects):
        for _attempt in range(20):
            kind = rng.choice(["box", "box", "sphere", "cylinder"])
            if kind == "box":
                extent = rng.uniform([0.2, 0.2, 0.2], [min(1.5, size[0] / 3), min(1.5, size[1] / 3), 1.6])
                low = room.room_min + rng.uniform(0, 1, 3) * (size - extent) * np.array([1, 1, 0])
                if rng.uniform() < 0.25:  # some boxes float (shelves, tables tops) so not everything sits on the floor
                    low[2] = rng.uniform(0.3, size[2] - extent[2] - 0.2)
                high = low + extent
                if _distance_to_boxes(camera_centres, low, high).min() < clearance_m:
                    continue
                boxes.append((low, high, len(materials)))
            elif kind == "sphere":
                radius = rng.uniform(0.15, 0.6)
                centre = room.room_min + radius + rng.uniform(0, 1, 3) * (size - 2 * radius)
                if (np.linalg.norm(camera_centres - centre, axis=-1) - radius).min() < clearance_m:
                    continue
                spheres.append((centre, radius, len(materials)))
            else:
                radius = rng.uniform(0.1, 0.45)
                top = rng.uniform(0.4, size[2] - 0.3)
                centre_xy = room.room_min[:2] + radius + rng.uniform(0, 1, 2) * (size[:2] - 2 * radius)
                low = np.r_[centre_xy - radius, 0.0]
                high = np.r_[centre_xy + radius, top]
                if _distance_to_boxes(camera_centres, low, high).min() < clearance_m:
                    continue
                cylinders.append((centre_xy, radius, top, len(materials)))
            materials.append(sample_material(rng))
            break

    def column(items: list, field: int, shape: tuple[int, ...], dtype=np.float64) -> np.ndarray:
        return np.array([item[field] for item in items], dtype=dtype).reshape(shape)

    return Scene(
        room_min=room.room_min,
        room_max=room.room_max,
        materials=tuple(materials),
        room_material=np.arange(len(ROOM_FACES)),
        box_min=column(boxes, 0, (-1, 3)),
        box_max=column(boxes, 1, (-1, 3)),
        box_material=column(boxes, 2, (-1,), np.int64),
        sphere_centre=column(spheres, 0, (-1, 3)),
        sphere_radius=column(spheres, 1, (-1,)),
        sphere_material=column(spheres, 2, (-1,), np.int64),
        cylinder_centre_xy=column(cylinders, 0, (-1, 2)),
        cylinder_radius=column(cylinders, 1, (-1,)),
        cylinder_top=column(cylinders, 2, (-1,)),
        cylinder_material=column(cylinders, 3, (-1,), np.int64),
        light_direction=room.light_direction,
        ambient=room.ambient,
        point_light=room.point_light,
        point_light_strength=room.point_light_strength,
    )
