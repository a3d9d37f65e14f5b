"""The renderer of GenEval-S Motion: a MotionSpec -> random straight trajectories that satisfy it -> a clip.

Each object is a shapes-world SceneObject (world/render.py's anti-aliased `draw`) whose centre moves along a
straight line at a constant velocity; every frame keeps every object inside the image and at least MIN_GAP
away from every other (no overlap in any frame), so a perfect generator is well defined and the verifier sees
each object whole. Objects are a little smaller than the shapes world's (a quick object must cross most of the
frame in 8 steps) but at least about 10 px at 32 px (MIN_SIZE), the size from which the detector still names a
blurred, noisy star.

Speeds are in pixels per frame at 32 px (scaled with the resolution): the renderer draws slow objects at
0.8-1.2, quick ones at 2.2-2.5, objects of no named speed at 1.0-2.0 and counted groups at 0.6-1.2 (two
columns of 10 px objects fill most of the frame); the verifier's bands (verify.py) sit around these with a
clear gap between slow and quick.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..world.render import SceneObject, draw, perturb
from .grammar import MotionSpec, Mover, parse_prompt
from .vocab import COLOR_NAMES, DIRECTIONS, FRAMES, RESOLUTION, SHAPES

MIN_SIZE, MAX_SIZE = 0.31, 0.34  # object box side as a fraction of the image side
MIN_GAP = 0.06  # free space between two objects' boxes in every frame, as a fraction of the image side
MARGIN = 0.5  # pixels kept free between an object's box and the image's edge
# speed word (None: not named) -> the renderer's range in pixels per frame at 32 px
RENDER_SPEEDS = {None: (1.0, 2.0), "slowly": (0.8, 1.2), "quickly": (2.2, 2.5)}
GROUP_SPEED = (0.6, 1.2)  # a counted group: four 10 px objects fill two columns, and only a slow group fits
CANDIDATES = 256  # random frame-0 centres tried per object per attempt


@dataclass(frozen=True)
class Track:
    """One object of a clip: centre (cx, cy) in frame 0, velocity (vx, vy) in pixels per frame, and the colour
    it takes from the middle frame (frames // 2) on, if it turns."""

    shape: str
    color: str
    cx: float
    cy: float
    vx: float
    vy: float
    size: float
    turns_to: str | None = None

    def at(self, t: int, frames: int = FRAMES) -> SceneObject:
        color = self.turns_to if self.turns_to and t >= frames // 2 else self.color
        return SceneObject(self.shape, color, self.cx + self.vx * t, self.cy + self.vy * t, self.size)


def _free(cands: np.ndarray, size: float, v: tuple[float, float], placed: list[Track], frames: int,
          min_gap: float) -> np.ndarray:
    """cands [K, 2] frame-0 centres of an object (size, velocity v) -> [K] bool: at least min_gap from every
    placed track in every frame (the boxes' Chebyshev gap, as world/geometry.gap)."""
    t = np.arange(frames)  # [T]
    ok = np.ones(len(cands), bool)
    for p in placed:
        # centre offset per candidate and frame [K, T]; boxes are apart when one axis' offset exceeds the half sides
        dx = np.abs(cands[:, :1] + (v[0] - p.vx) * t - p.cx)
        dy = np.abs(cands[:, 1:] + (v[1] - p.vy) * t - p.cy)
        reach = (size + p.size) / 2 + min_gap
        ok &= ((dx >= reach) | (dy >= reach)).all(1)
    return ok


def _start_range(v: float, size: float, resolution: int, frames: int) -> tuple[float, float]:
    """The frame-0 centres (one axis) from which a velocity v keeps the object inside in every frame."""
    m, travel = size / 2 + MARGIN, v * (frames - 1)
    return m - min(travel, 0.0), resolution - m - max(travel, 0.0)


def _speed_range(o: Mover) -> tuple[float, float]:
    """The renderer's speed range (pixels per frame at 32 px) for a noun phrase."""
    return GROUP_SPEED if o.count > 1 else RENDER_SPEEDS[o.speed]


def _check_fits(spec: MotionSpec, resolution: int, frames: int) -> None:
    if frames < 2:
        raise ValueError(f"a clip has at least 2 frames, got {frames}")
    for o in spec.objects:
        slowest = _speed_range(o)[0] * resolution / 32 if o.direction else 0.0
        if slowest * (frames - 1) + MIN_SIZE * resolution + 2 * MARGIN > resolution:
            raise ValueError(f"'{o.speed or 'moving'}' objects leave a {resolution}px frame within {frames} frames; "
                             f"accepted: at most {int((resolution * (1 - MIN_SIZE) - 2 * MARGIN) / slowest) + 1} frames")


def _distractors(spec: MotionSpec, rng: np.random.Generator, k: int) -> tuple[Mover, ...]:
    """k random objects nobody asked for, of shapes the prompt does not name (so the lenient rules still hold),
    each still or moving a random way."""
    shapes = [s for s in SHAPES if s not in {o.shape for o in spec.objects}]
    moves = (None, *DIRECTIONS)
    return tuple(Mover(shapes[rng.integers(len(shapes))], COLOR_NAMES[rng.integers(len(COLOR_NAMES))],
                       direction=moves[rng.integers(len(moves))]) for _ in range(k))


def sample_tracks(spec: MotionSpec, rng: np.random.Generator, resolution: int = RESOLUTION,
                  frames: int = FRAMES, distractors: int = 0, tries: int = 400) -> list[Track]:
    """Random tracks that satisfy spec; with `distractors`, that many objects nobody asked for beside them
    (without them where they do not fit). The objects of one noun phrase ("three stars") share one velocity,
    so they move as a group; unnamed colours are drawn at random, different within a group. After repeated
    failures objects get smaller and slower, never below MIN_SIZE or their speed range's floor."""
    _check_fits(spec, resolution, frames)
    if distractors:
        extra = MotionSpec(spec.category, spec.objects + _distractors(spec, rng, distractors))
        try:
            return sample_tracks(extra, rng, resolution, frames, tries=tries // 4)
        except RuntimeError:
            pass
    lo, hi = MIN_SIZE * resolution, MAX_SIZE * resolution
    min_gap = MIN_GAP * resolution
    for attempt in range(tries):
        ease = attempt / tries
        tracks: list[Track] = []
        for o in spec.objects:
            s_lo, s_hi = (x * resolution / 32 for x in _speed_range(o))
            speed = rng.uniform(s_lo, s_hi - (s_hi - s_lo) * ease) if o.direction else 0.0
            dx, dy = DIRECTIONS[o.direction] if o.direction else (0, 0)
            vx, vy = dx * speed, dy * speed
            # a group's free colours differ: two same-coloured objects 2 px apart would blur into one blob
            colors = [o.color] * o.count if o.color else rng.permutation(COLOR_NAMES)[: o.count].tolist()
            for color in colors:
                size = rng.uniform(lo, hi - (hi - lo) * ease)
                (x0, x1), (y0, y1) = (_start_range(v, size, resolution, frames) for v in (vx, vy))
                if x0 > x1 or y0 > y1:
                    break
                cands = np.stack([rng.uniform(x0, x1, CANDIDATES), rng.uniform(y0, y1, CANDIDATES)], 1)  # [K, 2]
                free = np.flatnonzero(_free(cands, size, (vx, vy), tracks, frames, min_gap))
                if not len(free):
                    break
                cx, cy = cands[free[0]]
                tracks.append(Track(o.shape, color, float(cx), float(cy), float(vx), float(vy), float(size), o.turns_to))
            else:
                continue
            break
        if len(tracks) == spec.n_objects:
            return tracks
    raise RuntimeError(f"could not place '{spec.prompt}' in {frames} frames at {resolution}px")


def draw_clip(tracks: list[Track], resolution: int = RESOLUTION, frames: int = FRAMES) -> np.ndarray:
    """Tracks -> uint8 [F, H, W, 3] RGB."""
    return np.stack([draw([tr.at(t, frames) for tr in tracks], resolution) for t in range(frames)])


def render_clip(spec: MotionSpec, rng: np.random.Generator, resolution: int = RESOLUTION,
                frames: int = FRAMES, distractors: int = 0) -> np.ndarray:
    """A random clip that satisfies spec exactly (with `distractors`: and that many objects nobody asked for
    beside it, where they fit): uint8 [F, H, W, 3]."""
    return draw_clip(sample_tracks(spec, rng, resolution, frames, distractors), resolution, frames)


def render_prompt(prompt: str, rng: np.random.Generator, resolution: int = RESOLUTION,
                  frames: int = FRAMES) -> np.ndarray:
    """A random clip of a prompt (PromptError if it is outside the grammar): uint8 [F, H, W, 3]."""
    return render_clip(parse_prompt(prompt), rng, resolution, frames)


def perturb_clip(clip: np.ndarray, rng: np.random.Generator, blur: float = 0.6, noise: float = 0.04) -> np.ndarray:
    """world/render.perturb on every frame (blur sigma in pixels, noise std as a fraction of 255): uint8 [F, H, W, 3]."""
    return np.stack([perturb(f, rng, blur, noise) for f in clip])
