"""The GenEval-S Motion verifier: detect the shapes in every frame, link them into trajectories, check a spec.

Detection is the shapes world's (world/verify.py `detect`, per frame). Linking is greedy nearest matching,
frame to frame: each trajectory predicts its next centre from its last step, and takes the cheapest detection
within MAX_STEP pixels of it, where cost = distance + SHAPE_COST if the shape differs + COLOR_COST if the
colour differs (so a colour change midway keeps its trajectory, and two objects passing each other keep
theirs); a detection nobody takes starts a trajectory; a trajectory unseen for MAX_GAP frames ends. A
trajectory's identity is its most frequent shape and colour, its velocity the least-squares slope of its
box centre against the frame index, in pixels per frame at 32 px (so the rules read the same at any resolution).

The rules per category (one check each; `score` is 1 when all hold, `partial` the fraction that hold):
    direction    the named object is present (a trajectory of its shape and colour over >= 2/3 of the
                 frames); it moves the named way (that axis dominates the velocity, with the named sign, at
                 >= MIN_SPEED)
    two_motions  both of these, for each of the two objects
    speed        present; direction; its speed |v| is in the named band (SPEED_BANDS: a clear gap between)
    constancy    the object is in every frame with the named shape; with the named colour; it stays still
                 (|v| < STILL_SPEED and no frame's centre more than STILL_WOBBLE from the mean)
    change       the object (a trajectory of the named shape) is in every frame; the first third of the frames
                 holds the first colour; the last third the second; the colour changes once (first colour, then
                 the second, nothing else). The shape in every frame is constancy's test, not change's.
    counting     at least N of the shape in every frame; at most N in every frame (GenEval's include and
                 exclude, in each frame; an object's shape is its trajectory's); the N longest trajectories of
                 the shape all move the named way
The lenient rules (like GenEval's) let objects nobody asked for in; the exact reading (`exact`) also asks that
no frame holds more detections than the number of objects named, unknown blobs included. `extra` is the
largest number of such objects in any frame (max over frames: one frame with a stray object is a wrong clip);
`stray` the share of the clip's pixels that is foreground outside the named objects' detections (smears and
specks too small to be objects), as the image verifier's.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..world.verify import Detection, _detect
from .grammar import MotionSpec, Mover
from .vocab import DIRECTIONS

MIN_SPEED = 0.4  # pixels per frame at 32 px: slower is not moving (the renderer's slowest is 0.6)
STILL_SPEED = 0.2  # faster is not staying still
STILL_WOBBLE = 1.5  # pixels at 32 px: the largest distance of a still object's centre from its mean
SPEED_BANDS = {"slowly": (0.4, 1.5), "quickly": (1.8, 4.0)}  # renderer: slow 0.8-1.2, quick 2.2-2.5
PRESENT = 2 / 3  # share of the frames a moving object's trajectory must cover to be found
MAX_STEP = 6.0  # pixels at 32 px a trajectory may move between two frames it is seen in (per frame apart)
MAX_GAP = 2  # frames in a row a trajectory may go unseen and still continue
SHAPE_COST = COLOR_COST = 4.0  # pixels of distance a differing shape or colour costs in linking


@dataclass
class Trajectory:
    """One object followed through the clip: the frames it is seen in and its detection in each."""

    frames: list[int] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)

    def centres(self) -> np.ndarray:
        return np.array([((d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2) for d in self.detections])  # [n, 2]

    @property
    def shape(self) -> str:
        return Counter(d.shape for d in self.detections).most_common(1)[0][0]

    @property
    def color(self) -> str:
        return Counter(d.color for d in self.detections).most_common(1)[0][0]

    def at(self, t: int) -> Detection | None:
        return self.detections[self.frames.index(t)] if t in self.frames else None

    def velocity(self, scale: float = 1.0) -> np.ndarray:
        """Least-squares slope of the centre against the frame index [2] (x, y), times scale; 0 if seen once."""
        if len(self.frames) < 2:
            return np.zeros(2)
        t = np.array(self.frames, float)
        t -= t.mean()
        c = self.centres()
        return (t @ (c - c.mean(0))) / (t @ t) * scale

    def predict(self, t: int) -> np.ndarray:
        """Where the object should be in frame t, continuing its last step."""
        c = self.centres()
        if len(c) < 2:
            return c[-1]
        step = (c[-1] - c[-2]) / (self.frames[-1] - self.frames[-2])
        return c[-1] + step * (t - self.frames[-1])


def link(per_frame: list[list[Detection]], max_step: float = MAX_STEP) -> list[Trajectory]:
    """Detections of each frame -> trajectories (greedy nearest matching; see the module's docstring)."""
    done: list[Trajectory] = []
    active: list[Trajectory] = []
    for t, dets in enumerate(per_frame):
        pairs = []
        for i, tr in enumerate(active):
            p, last = tr.predict(t), tr.detections[-1]
            for j, d in enumerate(dets):
                dist = float(np.hypot(*(np.array(((d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2)) - p)))
                if dist <= max_step * (t - tr.frames[-1]):
                    pairs.append((dist + SHAPE_COST * (d.shape != last.shape) + COLOR_COST * (d.color != last.color), i, j))
        taken_t, taken_d = set(), set()
        for _, i, j in sorted(pairs):
            if i not in taken_t and j not in taken_d:
                taken_t.add(i), taken_d.add(j)
                active[i].frames.append(t)
                active[i].detections.append(dets[j])
        active += [Trajectory([t], [d]) for j, d in enumerate(dets) if j not in taken_d]
        done += [tr for tr in active if t - tr.frames[-1] > MAX_GAP]
        active = [tr for tr in active if t - tr.frames[-1] <= MAX_GAP]
    return done + active


@dataclass
class MotionVerdict:
    checks: dict[str, bool]  # check name -> whether it holds (the category's rules, in order)
    extra: int = 0  # the most detections beyond the number named in any one frame (max over frames)
    stray: float = 0.0  # foreground outside the matched objects' detections, as a fraction of the clip's pixels
    trajectories: list[Trajectory] = field(default_factory=list)
    detections: list[list[Detection]] = field(default_factory=list)  # per frame

    @property
    def correct(self) -> bool:
        """The lenient rules: every check of the category holds (objects nobody asked for are let in)."""
        return all(self.checks.values())

    @property
    def score(self) -> float:
        return 1.0 if self.correct else 0.0

    @property
    def exact(self) -> bool:
        """The exact reading: every check holds and no frame holds an object nobody asked for."""
        return self.correct and self.extra == 0

    @property
    def partial(self) -> float:
        """The dense variant: the fraction of the category's checks that hold."""
        return sum(self.checks.values()) / len(self.checks)

    @property
    def exact_partial(self) -> float:
        """Partial credit of the exact reading: the category's checks plus one more, "no extra object"."""
        return (sum(self.checks.values()) + (self.extra == 0)) / (len(self.checks) + 1)

    @property
    def reasons(self) -> list[str]:
        """The failed checks (and the extra objects), for messages and debugging."""
        out = [name for name, ok in self.checks.items() if not ok]
        return out + ([f"{self.extra} object(s) beyond the number asked for in a frame"] if self.extra else [])


def _label(o: Mover) -> str:
    return f"{o.color} {o.shape}" if o.color else f"{o.shape}s"


def _find(trajectories: list[Trajectory], shape: str, color: str | None) -> Trajectory | None:
    """The longest trajectory of that identity (colour None: any), or None."""
    found = [tr for tr in trajectories if tr.shape == shape and (color is None or tr.color == color)]
    return max(found, key=lambda tr: (len(tr.frames), sum(d.area for d in tr.detections)), default=None)


def _moves(tr: Trajectory | None, direction: str, scale: float) -> bool:
    """The named axis dominates the velocity, with the named sign, at MIN_SPEED or more."""
    if tr is None:
        return False
    v = tr.velocity(scale)
    along = float(v @ np.array(DIRECTIONS[direction]))
    cross = float(abs(v @ np.array(DIRECTIONS[direction][::-1])))
    return along >= MIN_SPEED and along > cross


def _still(tr: Trajectory | None, scale: float) -> bool:
    if tr is None:
        return False
    c = tr.centres() * scale
    wobble = float(np.hypot(*(c - c.mean(0)).T).max())
    return float(np.hypot(*tr.velocity(scale))) < STILL_SPEED and wobble <= STILL_WOBBLE


def _every_frame(tr: Trajectory | None, frames: int, key: str, value: str) -> bool:
    """The trajectory is seen in every frame, with getattr(detection, key) == value in each."""
    return tr is not None and len(tr.frames) == frames and all(getattr(d, key) == value for d in tr.detections)


def _checks(spec: MotionSpec, tracks: list[Trajectory], per_frame: list[list[Detection]], scale: float,
            matched: list[Trajectory]) -> dict[str, bool]:
    """The category's checks, in order; appends the trajectories they judged (the named objects) to matched."""
    frames = len(per_frame)
    checks: dict[str, bool] = {}
    if spec.category == "counting":
        (o,) = spec.objects
        # an object's shape is its trajectory's (its most frequent): a frame where blur makes a star read as a
        # triangle still holds that star; constancy is the category that asks for the shape in every frame
        counts = [sum(tr.shape == o.shape for tr in tracks if t in tr.frames) for t in range(frames)]
        checks[f"at least {o.count} {o.shape}s in every frame"] = min(counts) >= o.count
        checks[f"at most {o.count} {o.shape}s in every frame"] = max(counts) <= o.count
        of_shape = sorted((tr for tr in tracks if tr.shape == o.shape and len(tr.frames) >= PRESENT * frames),
                          key=lambda tr: -len(tr.frames))[: o.count]
        matched += of_shape
        checks[f"{o.count} {o.shape}s moving {o.direction}"] = (
            len(of_shape) == o.count and all(_moves(tr, o.direction, scale) for tr in of_shape))
        return checks
    for o in spec.objects:
        name = _label(o)
        if spec.category in ("constancy", "change"):
            tr = _find(tracks, o.shape, None if o.turns_to else o.color)
            matched += [tr] if tr else []
            if o.turns_to is None:
                checks[f"{name}: a {o.shape} in every frame"] = _every_frame(tr, frames, "shape", o.shape)
                checks[f"{name}: {o.color} in every frame"] = _every_frame(tr, frames, "color", o.color)
                checks[f"{name}: staying still"] = _still(tr, scale)
                continue
            # change tests the colour: the object is its trajectory (its most frequent shape), seen in every frame
            checks[f"{name}: in every frame"] = tr is not None and len(tr.frames) == frames
            colors = [tr.at(t).color if tr and tr.at(t) else None for t in range(frames)]
            third = max(frames // 3, 1)
            checks[f"{name}: {o.color} in the first third"] = all(c == o.color for c in colors[:third])
            checks[f"{name}: {o.turns_to} in the last third"] = all(c == o.turns_to for c in colors[-third:])
            switch = colors.index(o.turns_to) if o.turns_to in colors else frames
            checks[f"{name}: turning once"] = (switch < frames and all(c == o.color for c in colors[:switch])
                                               and all(c == o.turns_to for c in colors[switch:]))
            continue
        tr = _find(tracks, o.shape, o.color)
        tr = tr if tr is not None and len(tr.frames) >= PRESENT * frames else None
        matched += [tr] if tr else []
        checks[f"{name}: present"] = tr is not None
        checks[f"{name}: moving {o.direction}"] = _moves(tr, o.direction, scale)
        if o.speed:
            lo, hi = SPEED_BANDS[o.speed]
            checks[f"{name}: moving {o.speed}"] = tr is not None and lo <= float(np.hypot(*tr.velocity(scale))) <= hi
    return checks


def verify_clip(clip: np.ndarray, spec: MotionSpec) -> MotionVerdict:
    """uint8 RGB [F, H, W, 3] clip against a spec."""
    if clip.ndim != 4 or clip.shape[-1] != 3:
        raise ValueError(f"a clip is uint8 [F, H, W, 3], got shape {tuple(clip.shape)}")
    scale = 32 / clip.shape[2]  # pixels at this resolution -> pixels at 32 px
    found = [_detect(f) for f in clip]
    per_frame = [dets for dets, _ in found]
    tracks = link(per_frame, MAX_STEP / scale)
    extra = max(max(len(dets) - spec.n_objects, 0) for dets in per_frame)
    matched: list[Trajectory] = []
    checks = _checks(spec, tracks, per_frame, scale, matched)
    named = sum(d.area for tr in matched for d in tr.detections)
    stray = max(sum(fg for _, fg in found) - named, 0) / clip[..., 0].size
    return MotionVerdict(checks, extra, stray, tracks, per_frame)
