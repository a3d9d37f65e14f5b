"""Box geometry shared by the renderer (to place objects) and the verifier (to check them)."""

from __future__ import annotations

import math

# GenEval's threshold: the part of the centre offset that the two boxes' sizes explain is discounted.
POSITION_THRESHOLD = 0.1

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels, y pointing down


def relations(a: Box, b: Box, slack: float = 0.0) -> set[str]:
    """Where box a lies relative to box b: a subset of {'left of', 'right of', 'above', 'below'}.

    GenEval's rule: offset = centre_a - centre_b, shrunk towards 0 by 0.1 x (size_a + size_b) per axis;
    a relation holds when its axis carries more than half of the (unshrunk) offset's length. The renderer
    asks for `slack` more than half, so that the relations it draws survive pixel rounding."""
    cax, cay = (a[0] + a[2]) / 2, (a[1] + a[3]) / 2
    cbx, cby = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    ox, oy = cax - cbx, cay - cby
    norm = math.hypot(ox, oy)
    if norm == 0:
        return set()
    wx = POSITION_THRESHOLD * ((a[2] - a[0]) + (b[2] - b[0]))
    wy = POSITION_THRESHOLD * ((a[3] - a[1]) + (b[3] - b[1]))
    dx = math.copysign(max(abs(ox) - wx, 0.0), ox) / norm
    dy = math.copysign(max(abs(oy) - wy, 0.0), oy) / norm
    t = 0.5 + slack
    out = set()
    if dx < -t:
        out.add("left of")
    if dx > t:
        out.add("right of")
    if dy < -t:
        out.add("above")
    if dy > t:
        out.add("below")
    return out


def gap(a: Box, b: Box) -> float:
    """Chebyshev distance between two boxes (0 when they touch or overlap)."""
    return max(a[0] - b[2], b[0] - a[2], a[1] - b[3], b[1] - a[3], 0.0)
