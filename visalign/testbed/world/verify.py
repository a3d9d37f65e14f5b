"""The GenEval-S verifier: detect the coloured shapes in an image and check a Spec against them.

Detection (OpenCV): pixels bright and saturated enough are foreground; each takes the palette colour of
nearest hue (hue survives blending with the black background); connected components of one colour are
objects. A component is classified from its upsampled soft mask by two scale-free numbers, extent (area /
box area: square 1, circle pi/4, triangle and star ~1/2) and solidity (area / convex hull area: star ~0.6,
the rest ~1); a blob far from every shape is 'unknown' and counts as no shape.

Checking follows GenEval's rules (Ghosh et al., 2023): each `include` requirement takes the largest
objects of its shape (GenEval takes the most confident detections), needs `count` of them, the colour if
one is named, and the relation to the objects matched by its target; counting also has an `exclude`
(N+1 or more fails). `score` is 1.0 when every check holds; `partial` is the fraction of checks that hold.

GenEval's rules let other objects into an image (photographs hold other things), and a policy trained on them
learns that leniency: extra shapes beside the one asked for, half-formed blobs between counted stars. The
exact reading closes it: the image holds the named objects and nothing else, where "else" is any other
detection above the size floor, an unknown blob included. Two per-image measures come with every verdict:
`extra`, the detections beyond the number of objects the prompt names (objects nobody asked for), and
`stray`, the share of the image that is foreground but belongs to no matched object (smears and specks too
small to be objects).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from .geometry import Box, relations
from .grammar import Spec
from .vocab import COLOR_NAMES, COLORS

MIN_VALUE = 0.35  # HSV value (0..1) below which a pixel is background
MIN_SATURATION = 0.35
MIN_AREA = 0.008  # smallest object, as a fraction of the image area (8 px at 32x32)
UPSAMPLE = 8

_HUES = np.array([COLORS[c][1] for c in COLOR_NAMES], np.float32)  # [C]

# Accepted (extent, solidity) boxes per shape, measured on clean and blurred renders at 32-128 px with margin.
SHAPE_RULES = {
    "square": dict(extent=(0.84, 1.01), solidity=(0.88, 1.01)),
    "circle": dict(extent=(0.66, 0.84), solidity=(0.88, 1.01)),
    "triangle": dict(extent=(0.36, 0.66), solidity=(0.84, 1.01)),
    "star": dict(extent=(0.28, 0.62), solidity=(0.45, 0.84)),
}
MAX_ASPECT = 1.6  # every shape of the world has a square box


@dataclass(frozen=True)
class Detection:
    shape: str  # one of SHAPES, or "unknown"
    color: str
    box: Box
    area: float  # pixels


@dataclass
class Verdict:
    correct: bool  # GenEval's rules
    partial: float  # fraction of GenEval's checks satisfied, in [0, 1]
    detections: list[Detection] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    extra: int = 0  # detections beyond the number of objects named: objects (or unknown blobs) nobody asked for
    stray: float = 0.0  # foreground outside the matched objects, as a fraction of the image's pixels
    n_checks: int = 1  # how many of GenEval's checks `partial` is the fraction of

    @property
    def exact(self) -> bool:
        """The exact reading: GenEval's rules hold and the image holds nothing but the named objects."""
        return self.correct and self.extra == 0

    @property
    def exact_partial(self) -> float:
        """Partial credit of the exact reading: GenEval's checks plus one more, "no extra object"."""
        return (self.partial * self.n_checks + (self.extra == 0)) / (self.n_checks + 1)

    @property
    def score(self) -> float:
        return 1.0 if self.correct else 0.0


def _hsv(image: np.ndarray) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> float32 HSV with H in degrees, S and V in [0, 1]."""
    return cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)


def _classify(soft: np.ndarray) -> str:
    """soft: [h, w] coverage in [0, 1] of one component's box (1 px border) -> shape name or 'unknown'."""
    big = cv2.resize(soft, (soft.shape[1] * UPSAMPLE, soft.shape[0] * UPSAMPLE), interpolation=cv2.INTER_LINEAR)
    mask = (big > 0.5).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return "unknown"
    c = max(contours, key=cv2.contourArea)
    area = cv2.contourArea(c)
    x, y, w, h = cv2.boundingRect(c)
    hull = cv2.contourArea(cv2.convexHull(c))
    if area <= 0 or hull <= 0 or max(w, h) > MAX_ASPECT * min(w, h):
        return "unknown"
    extent, solidity = area / (w * h), area / hull
    for shape, rule in SHAPE_RULES.items():
        if rule["extent"][0] <= extent < rule["extent"][1] and rule["solidity"][0] <= solidity < rule["solidity"][1]:
            return shape
    return "unknown"


def _detect(image: np.ndarray) -> tuple[list[Detection], int]:
    """uint8 RGB [H, W, 3] -> (the objects in it, largest first; its foreground pixel count)."""
    hsv = _hsv(image)
    hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    fg = (val > MIN_VALUE) & (sat > MIN_SATURATION)  # [H, W]
    dist = np.abs(hue[..., None] - _HUES)  # [H, W, C] circular hue distance
    label = np.minimum(dist, 360 - dist).argmin(-1)  # [H, W]
    min_area = MIN_AREA * image.shape[0] * image.shape[1]
    found = []
    for ci, color in enumerate(COLOR_NAMES):
        mask = (fg & (label == ci)).astype(np.uint8)
        if mask.sum() < min_area:
            continue
        n, comp, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        for k in range(1, n):
            x, y, w, h, area = stats[k]
            if area < min_area:
                continue
            # Soft coverage: the component's value relative to its brightest pixel, with a 1 px border
            # so that anti-aliased edges (below the foreground threshold) shape the outline too.
            x0, y0 = max(x - 1, 0), max(y - 1, 0)
            x1, y1 = min(x + w + 1, image.shape[1]), min(y + h + 1, image.shape[0])
            near = cv2.dilate((comp == k).astype(np.uint8), np.ones((3, 3), np.uint8))[y0:y1, x0:x1]
            v = val[y0:y1, x0:x1] * near * (label[y0:y1, x0:x1] == ci)
            soft = np.clip(v / max(float(v.max()), 1e-6), 0, 1)
            found.append(Detection(_classify(soft), color, (float(x), float(y), float(x + w), float(y + h)), float(area)))
    return sorted(found, key=lambda d: -d.area), int(fg.sum())


def detect(image: np.ndarray) -> list[Detection]:
    """uint8 RGB [H, W, 3] -> the objects in it, largest first."""
    return _detect(image)[0]


def check(spec: Spec, detections: list[Detection], foreground: int = 0, pixels: int = 1) -> Verdict:
    """GenEval's include/exclude evaluation of a spec against detections (largest first), with the exact
    reading's measures: detections beyond the number named are extra; `foreground` pixels (of `pixels`) outside
    the matched ones are stray."""
    checks: list[bool] = []
    reasons: list[str] = []
    matched: list[list[Detection] | None] = []
    named: list[Detection] = []  # every detection an include took, whether or not its checks hold
    for req in spec.includes():
        of_shape = [d for d in detections if d.shape == req.shape]
        found = of_shape[: req.count]
        named += [d for d in found if not any(d is m for m in named)]
        ok = len(found) >= req.count
        checks.append(ok)
        if not ok:
            reasons.append(f"expected {req.shape}>={req.count}, found {len(of_shape)}")
        if req.color is not None:
            good = ok and all(d.color == req.color for d in found)
            checks.append(good)
            if not good:
                reasons.append(f"expected {req.color} {req.shape}, found {[d.color for d in found]}")
            ok = ok and good
        if req.relation is not None:
            targets = matched[req.target]
            good = ok and targets is not None and all(
                req.relation in relations(d.box, t.box) for d in found for t in targets
            )
            checks.append(good)
            if not good:
                reasons.append(f"expected {req.shape} {req.relation} target")
            ok = ok and good
        matched.append(found if ok else None)
    for shape, n in spec.excludes():
        have = sum(d.shape == shape for d in detections)
        checks.append(have < n)
        if have >= n:
            reasons.append(f"expected {shape}<{n}, found {have}")
    # objects beyond the number the prompt names (a wrong shape in place of a named one is a failed check, not
    # an extra); when GenEval's checks hold, these are exactly the detections no include matched
    extra = max(len(detections) - sum(o.count for o in spec.objects), 0)
    if extra:
        reasons.append(f"{extra} object(s) beyond the {sum(o.count for o in spec.objects)} asked for")
    stray = max(foreground - sum(d.area for d in named), 0) / pixels
    return Verdict(all(checks), sum(checks) / len(checks), detections, reasons, extra, stray, len(checks))


def verify(image: np.ndarray, spec: Spec) -> Verdict:
    """uint8 RGB [H, W, 3] image against a spec."""
    detections, foreground = _detect(image)
    return check(spec, detections, foreground, image.shape[0] * image.shape[1])
