"""Vectorised geometry: points in polygons, segments crossing a line."""

from __future__ import annotations

import numpy as np


def in_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """``[n, 2]`` points -> ``[n]`` bool, inside ``[k, 2]`` polygon (even-odd ray casting)."""
    x, y = points[:, 0:1], points[:, 1:2]
    x1, y1 = polygon[:, 0], polygon[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    straddles = (y1 > y) != (y2 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
    hits = straddles & (x < x_cross)
    return (hits.sum(axis=1) % 2) == 1


def side(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sign of the cross product: >0 left of a->b, <0 right, 0 on the line."""
    d = b - a
    return np.sign(d[0] * (points[..., 1] - a[1]) - d[1] * (points[..., 0] - a[0]))


def crossing(p: np.ndarray, q: np.ndarray, a: np.ndarray, b: np.ndarray) -> int:
    """+1 if the move p->q crosses segment a->b from its left to its right, -1 the other
    way, 0 if it does not cross."""
    s1, s2 = side(p, a, b), side(q, a, b)
    if s1 == 0 or s2 == 0 or s1 == s2:
        return 0
    t1, t2 = side(a, p, q), side(b, p, q)
    if t1 == t2:
        return 0
    return 1 if s1 > 0 else -1
