"""Object shapes as polygons in a local frame (x along the long axis, roughly in [-0.5, 0.5]), with random
proportions. Each builder returns ``(polygons, part per polygon)``; part 0 takes the main colour, 1 the second.
"""

from __future__ import annotations

import math

import numpy as np

Polygon = list[tuple[float, float]]
"""A polygon in an object's local frame: x along the object's long axis, roughly in [-0.5, 0.5]."""


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 24, a0: float = 0.0, a1: float = 360.0) -> Polygon:
    full = a1 - a0 >= 360
    # A closed ellipse must not repeat its first point; an arc keeps both end points.
    angles = np.linspace(a0, a1, n, endpoint=not full)
    return [(cx + rx * math.cos(math.radians(a)), cy + ry * math.sin(math.radians(a))) for a in angles]


def _rect(x0: float, y0: float, x1: float, y1: float) -> Polygon:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _arc_band(cx: float, cy: float, r_out: float, r_in: float, a0: float, a1: float, n: int = 10) -> Polygon:
    """A curved band (an arc with thickness) as one hole-free polygon."""
    outer = _ellipse(cx, cy, r_out, r_out, n, a0, a1)
    inner = _ellipse(cx, cy, r_in, r_in, n, a0, a1)
    return outer + inner[::-1]


def _pistol(r: np.random.Generator) -> tuple[list[Polygon], list[int]]:
    barrel = r.uniform(0.75, 1.0)
    h = r.uniform(0.14, 0.2)
    grip_w = r.uniform(0.18, 0.26)
    grip_len = r.uniform(0.32, 0.45)
    slant = r.uniform(0.05, 0.16)
    x0 = -0.5
    slide = _rect(x0, -h, x0 + barrel, 0.0)
    grip = [
        (x0 + 0.02, 0.0),
        (x0 + 0.02 + grip_w, 0.0),
        (x0 + 0.02 + grip_w - slant, grip_len),
        (x0 + 0.02 - slant, grip_len),
    ]
    guard = _arc_band(x0 + grip_w + 0.1, 0.0, 0.09, 0.06, 0, 180, 8)
    return [slide, grip, guard], [0, 1, 0]


def _revolver(r: np.random.Generator) -> tuple[list[Polygon], list[int]]:
    barrel = r.uniform(0.45, 0.6)
    h = r.uniform(0.08, 0.11)
    x0 = -0.5
    cyl = _rect(x0 + 0.12, -0.1, x0 + 0.36, 0.06)
    bar = _rect(x0 + 0.36, -0.1, x0 + 0.36 + barrel, -0.1 + h)
    frame = _rect(x0 + 0.02, -0.12, x0 + 0.14, 0.03)
    grip = [(x0 + 0.02, 0.03), (x0 + 0.16, 0.03), (x0 + 0.06, 0.36), (x0 - 0.1, 0.33)]
    guard = _arc_band(x0 + 0.2, 0.06, 0.07, 0.045, 0, 180, 8)
    return [cyl, bar, frame, grip, guard], [0, 0, 0, 1, 0]


def _rifle(r: np.random.Generator) -> tuple[list[Polygon], list[int]]:
    x0, x1 = -0.5, 0.5
    stock_len = r.uniform(0.22, 0.3)
    body_h = r.uniform(0.07, 0.1)
    stock = [(x0, -0.03), (x0 + stock_len, -0.02), (x0 + stock_len, body_h), (x0, 0.13)]
    body = _rect(x0 + stock_len, -0.04, x0 + stock_len + 0.35, body_h)
    barrel = _rect(x0 + stock_len + 0.35, -0.03, x1, 0.0)
    mag_x = x0 + stock_len + r.uniform(0.15, 0.25)
    mag = [
        (mag_x, body_h),
        (mag_x + 0.07, body_h),
        (mag_x + 0.1, body_h + 0.16),
        (mag_x + 0.03, body_h + 0.17),
    ]
    grip_x = x0 + stock_len + 0.02
    grip = [
        (grip_x, body_h),
        (grip_x + 0.06, body_h),
        (grip_x + 0.03, body_h + 0.12),
        (grip_x - 0.03, body_h + 0.11),
    ]
    return [stock, body, barrel, mag, grip], [1, 0, 0, 0, 1]


def _knife(r: np.random.Generator) -> tuple[list[Polygon], list[int]]:
    handle = r.uniform(0.3, 0.4)
    w = r.uniform(0.09, 0.14)
    x0, x1 = -0.5, 0.5
    hx = x0 + handle
    # Blade: straight spine, edge curving up to the tip.
    edge = [(hx + (x1 - hx) * t, w * (1 - t**2.2)) for t in np.linspace(0, 1, 8)]
    blade = [(hx, -0.02)] + [(x1, -0.02)] + edge[::-1]
    hnd = _rect(x0, -0.02, hx, w * 0.85)
    return [blade, hnd], [0, 1]


def _dagger(r: np.random.Generator) -> tuple[list[Polygon], list[int]]:
    handle = r.uniform(0.25, 0.32)
    w = r.uniform(0.06, 0.09)
    x0, x1 = -0.5, 0.5
    hx = x0 + handle
    blade = [(hx, -w), (x1 - 0.12, -w * 0.7), (x1, 0.0), (x1 - 0.12, w * 0.7), (hx, w)]
    guard = _rect(hx - 0.04, -w - 0.08, hx, w + 0.08)
    hnd = _rect(x0, -w * 0.7, hx - 0.04, w * 0.7)
    pommel = _ellipse(x0, 0.0, 0.04, 0.04, 10)
    return [blade, guard, hnd, pommel], [0, 1, 1, 1]


def _circle(r: np.random.Generator) -> tuple[list[Polygon], list[int]]:
    rad = r.uniform(0.2, 0.32)
    return [_ellipse(0, 0, rad, rad * r.uniform(0.8, 1.0), 28)], [0]


def _box(r: np.random.Generator) -> tuple[list[Polygon], list[int]]:
    w, h = r.uniform(0.3, 0.6), r.uniform(0.2, 0.45)
    lid = _rect(-w / 2, -h / 2 - 0.05, w / 2, -h / 2)
    return [_rect(-w / 2, -h / 2, w / 2, h / 2), lid], [0, 1]


def _phone(r: np.random.Generator) -> tuple[list[Polygon], list[int]]:
    w, h = r.uniform(0.2, 0.28), r.uniform(0.4, 0.55)
    body = _rect(-w / 2, -h / 2, w / 2, h / 2)
    screen = _rect(-w / 2 + 0.025, -h / 2 + 0.05, w / 2 - 0.025, h / 2 - 0.06)
    return [body, screen], [0, 1]


def _bottle(r: np.random.Generator) -> tuple[list[Polygon], list[int]]:
    w = r.uniform(0.16, 0.24)
    body = _rect(-0.1, -w / 2, 0.5, w / 2)
    shoulder = [(-0.1, -w / 2), (-0.1, w / 2), (-0.25, 0.04), (-0.25, -0.04)]
    neck = _rect(-0.4, -0.04, -0.25, 0.04)
    cap = _rect(-0.46, -0.05, -0.4, 0.05)
    label = _rect(0.05, -w / 2, 0.35, w / 2)
    return [body, shoulder, neck, cap, label], [0, 0, 0, 1, 1]


def _umbrella(r: np.random.Generator) -> tuple[list[Polygon], list[int]]:
    rad = r.uniform(0.3, 0.4)
    canopy = _ellipse(0, 0, rad, rad * 0.8, 16, 180, 360) + [(rad, 0.0)]
    shaft = _rect(-0.012, 0.0, 0.012, 0.42)
    hook = _arc_band(-0.05, 0.42, 0.062, 0.038, 0, 180, 8)
    return [canopy, shaft, hook], [0, 1, 1]


def _mug(r: np.random.Generator) -> tuple[list[Polygon], list[int]]:
    w, h = r.uniform(0.24, 0.32), r.uniform(0.28, 0.36)
    body = _rect(-w / 2, -h / 2, w / 2, h / 2)
    handle = _arc_band(w / 2, 0.0, h * 0.3, h * 0.18, -90, 90, 9)
    return [body, handle], [0, 0]


def _spoon(r: np.random.Generator) -> tuple[list[Polygon], list[int]]:
    bowl = _ellipse(0.32, 0.0, 0.16, r.uniform(0.08, 0.11), 20)
    handle = [(-0.5, -0.025), (0.18, -0.018), (0.18, 0.018), (-0.5, 0.025)]
    return [handle, bowl], [0, 0]


def _star(r: np.random.Generator) -> tuple[list[Polygon], list[int]]:
    n = int(r.integers(5, 8))
    ro, ri = r.uniform(0.25, 0.35), r.uniform(0.1, 0.15)
    pts = [
        (
            (ro if k % 2 == 0 else ri) * math.cos(math.pi * k / n),
            (ro if k % 2 == 0 else ri) * math.sin(math.pi * k / n),
        )
        for k in range(2 * n)
    ]
    return [pts], [0]


BUILDERS = {
    "pistol": _pistol,
    "revolver": _revolver,
    "rifle": _rifle,
    "knife": _knife,
    "dagger": _dagger,
    "circle": _circle,
    "box": _box,
    "phone": _phone,
    "bottle": _bottle,
    "umbrella": _umbrella,
    "mug": _mug,
    "spoon": _spoon,
    "star": _star,
}
