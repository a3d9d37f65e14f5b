"""The renderer: a Spec -> a random scene that satisfies it exactly -> an anti-aliased RGB image.

Objects are axis-aligned shapes of one flat colour on a black background, drawn at 4x resolution and
area-downsampled (anti-aliasing), never touching each other, so a perfect generator is well defined.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .geometry import Box, gap, relations
from .grammar import Spec
from .vocab import BACKGROUND, COLOR_NAMES, COLORS, MAX_OBJECTS, SHAPES

SUPERSAMPLE = 4
MIN_SIZE, MAX_SIZE = 0.30, 0.38  # object box side as a fraction of the image side
MIN_GAP = 0.06  # free space between two objects' boxes, as a fraction of the image side


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    ang = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    rad = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1)


def _fill_box(poly: np.ndarray) -> np.ndarray:
    """Stretch a polygon so that it fills the box [-1, 1]^2 exactly (its box is the object's box)."""
    lo, hi = poly.min(0), poly.max(0)
    return (poly - lo) / (hi - lo) * 2 - 1


# Unit polygons filling [-1, 1]^2, y pointing down. The circle is drawn as a circle.
POLYGONS = {
    "square": np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64),
    "triangle": np.array([[0, -1], [1, 1], [-1, 1]], dtype=np.float64),
    "star": _fill_box(_star()),
}


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    cx: float  # centre in pixels
    cy: float
    size: float  # side of the object's box in pixels

    @property
    def box(self) -> Box:
        h = self.size / 2
        return (self.cx - h, self.cy - h, self.cx + h, self.cy + h)


def draw(objects: list[SceneObject], resolution: int = 32) -> np.ndarray:
    """Render objects -> uint8 [H, W, 3] RGB."""
    ss = SUPERSAMPLE
    canvas = np.empty((resolution * ss, resolution * ss, 3), np.uint8)
    canvas[:] = BACKGROUND
    for o in objects:
        rgb = COLORS[o.color][0]
        if o.shape == "circle":
            # cv2 circles take integer centres; draw at 16x sub-pixel precision via `shift`.
            c = (int(round(o.cx * ss * 16)), int(round(o.cy * ss * 16)))
            cv2.circle(canvas, c, int(round(o.size / 2 * ss * 16)), rgb, -1, cv2.LINE_8, shift=4)
        else:
            pts = POLYGONS[o.shape] * (o.size / 2) + (o.cx, o.cy)
            pts = np.round(pts * ss * 16).astype(np.int32)
            cv2.fillPoly(canvas, [pts], rgb, cv2.LINE_8, shift=4)
    return cv2.resize(canvas, (resolution, resolution), interpolation=cv2.INTER_AREA)


def _place(rng: np.random.Generator, shapes_colors, resolution: int, relation: str | None, tries: int = 500):
    lo, hi = MIN_SIZE * resolution, MAX_SIZE * resolution
    for attempt in range(tries):
        # Shrink objects a little after repeated failures so four always fit.
        shrink = 1.0 - 0.3 * attempt / tries
        placed: list[SceneObject] = []
        for shape, color in shapes_colors:
            size = rng.uniform(lo, hi) * shrink
            for _ in range(50):
                cx, cy = rng.uniform(size / 2 + 0.5, resolution - size / 2 - 0.5, size=2)
                cand = SceneObject(shape, color, float(cx), float(cy), float(size))
                if all(gap(cand.box, p.box) >= MIN_GAP * resolution for p in placed):
                    placed.append(cand)
                    break
            else:
                break
        if len(placed) != len(shapes_colors):
            continue
        if relation is not None and relation not in relations(placed[0].box, placed[1].box, slack=0.1):
            continue
        return placed
    raise RuntimeError(f"could not place {len(shapes_colors)} objects at {resolution}px")


def sample_scene(spec: Spec, rng: np.random.Generator, resolution: int = 32,
                 extra: tuple[tuple[str, str], ...] = ()) -> list[SceneObject]:
    """A random scene that satisfies spec with no extra objects; unnamed colours are drawn uniformly.
    `extra`: (shape, colour) distractors placed as well (at most MAX_OBJECTS objects in all fit)."""
    items = []
    for o in spec.objects:
        for _ in range(o.count):
            color = o.color or COLOR_NAMES[rng.integers(len(COLOR_NAMES))]
            items.append((o.shape, color))
    return _place(rng, items + list(extra), resolution, spec.relation)


def with_distractors(spec: Spec, rng: np.random.Generator, resolution: int, distractors: int) -> list[SceneObject]:
    """A scene that satisfies spec plus up to `distractors` random objects nobody asked for, where they fit (at
    most MAX_OBJECTS in all; without them when they cannot be placed)."""
    k = min(distractors, MAX_OBJECTS - sum(o.count for o in spec.objects))
    extra = tuple((SHAPES[rng.integers(len(SHAPES))], COLOR_NAMES[rng.integers(len(COLOR_NAMES))]) for _ in range(k))
    try:
        return sample_scene(spec, rng, resolution, extra)
    except RuntimeError:
        return sample_scene(spec, rng, resolution)


def render(spec: Spec, rng: np.random.Generator, resolution: int = 32, distractors: int = 0) -> np.ndarray:
    """A random render that satisfies spec; with `distractors`, objects nobody asked for beside it."""
    scene = with_distractors(spec, rng, resolution, distractors) if distractors else sample_scene(spec, rng, resolution)
    return draw(scene, resolution)


def perturb(image: np.ndarray, rng: np.random.Generator, blur: float = 0.6, noise: float = 0.04) -> np.ndarray:
    """Mild degradation: Gaussian blur (sigma in pixels) then Gaussian noise (std as a fraction of 255)."""
    out = image.astype(np.float32)
    if blur > 0:
        out = cv2.GaussianBlur(out, (0, 0), blur)
    if noise > 0:
        out = out + rng.normal(0, noise * 255, out.shape)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
