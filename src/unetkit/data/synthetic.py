"""The built-in data set: procedural driving scenes with pixel-exact class masks.

Why: the tutorial's CARLA frames are large and not ours to ship. These scenes have the same flavour
(road, lane markings, sidewalks, buildings, vegetation, vehicles, pedestrians, poles, signs, sky)
so that demos, tests and benchmarks run offline, at any size, in seconds.

How: a pinhole camera looks down a (possibly curving) road over a flat ground plane; everything is
painted back to front (painter's algorithm), so farther things are smaller, closer to the horizon
and hidden by nearer ones. Street layout, horizon, road width and curvature, weather and time of
day change from scene to scene. Class colours overlap on purpose (grey cars on grey asphalt, walls
in building colours, green signs and clothes next to foliage, an overcast sky as grey as the road)
and every image gets its own exposure, colour cast, contrast, blur and noise: a per-pixel colour
lookup is far from enough, a model has to use shape and context.

Scene ``i`` of a data set is ``make_scene(seed, i, height, width)``, a pure function: any scene can
be regenerated on its own, in any order. The layout depends on (seed, index) only, so one scene at
two sizes shows the same street.

Speed: painting only writes two 2-D maps (a colour-table id and a brightness factor per pixel);
colours, class ids and materials are looked up from the table once at the end.
"""

from __future__ import annotations

import bisect
import colorsys
import itertools
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CLASS_NAMES: list[str] = [
    "unlabeled",
    "sky",
    "road",
    "lane_marking",
    "sidewalk",
    "building",
    "fence",
    "vegetation",
    "terrain",
    "pole",
    "traffic_sign",
    "pedestrian",
    "vehicle",
]
# CARLA / Cityscapes colours, one [r, g, b] per class
PALETTE: list[list[int]] = [
    [0, 0, 0],
    [70, 130, 180],
    [128, 64, 128],
    [157, 234, 50],
    [244, 35, 232],
    [70, 70, 70],
    [190, 153, 153],
    [107, 142, 35],
    [152, 251, 152],
    [153, 153, 153],
    [220, 220, 0],
    [220, 20, 60],
    [0, 0, 142],
]
N_CLASSES: int = len(CLASS_NAMES)

(VOID, SKY, ROAD, LANE, SIDEWALK, BUILDING, FENCE, VEGETATION, TERRAIN, POLE, SIGN, PERSON, VEHICLE) = range(N_CLASSES)

Colour = tuple[float, float, float]

# Materials only steer the texture (noise amplitudes) added at the end; they are not classes.
(
    _M_FLAT,
    _M_SKY,
    _M_ASPHALT,
    _M_PAINT,
    _M_PAVING,
    _M_WALL,
    _M_GLASS,
    _M_LEAF,
    _M_GRASS,
    _M_METAL,
    _M_CLOTH,
    _M_SKIN,
    _M_DIRT,
) = range(13)
#                    flat  sky  asph paint pave wall glass leaf grass metal cloth skin dirt
_FINE = np.array([0.02, 0.01, 0.08, 0.05, 0.06, 0.04, 0.03, 0.2, 0.15, 0.03, 0.05, 0.02, 0.13], np.float32)  # per pixel
_MID = np.array([0.02, 0.0, 0.04, 0.03, 0.04, 0.04, 0.05, 0.18, 0.1, 0.02, 0.03, 0.01, 0.09], np.float32)  # blotches
_LOW = np.array(
    [0.03, 0.0, 0.05, 0.04, 0.05, 0.05, 0.05, 0.06, 0.07, 0.02, 0.02, 0.0, 0.08], np.float32
)  # large patches


_Obj = tuple[float, float, str, dict[str, Any]]  # an object to draw: distance, lateral, kind, params


def _cum(weights: list[float]) -> list[float]:
    return list(itertools.accumulate(float(w) for w in weights))


# Base colours (0..1, before per-image lighting); hues shared across classes are deliberate.
_CAR_PAINTS: list[Colour] = [
    (0.9, 0.9, 0.9),
    (0.07, 0.07, 0.08),
    (0.62, 0.63, 0.65),
    (0.36, 0.37, 0.39),
    (0.1, 0.14, 0.32),
    (0.62, 0.08, 0.08),
    (0.2, 0.34, 0.68),
    (0.16, 0.34, 0.2),
    (0.86, 0.7, 0.15),
    (0.42, 0.3, 0.2),
    (0.58, 0.53, 0.43),
    (0.45, 0.47, 0.42),
]
_CAR_CUM = _cum([4, 4, 4, 4, 1.5, 1.5, 1.5, 1, 0.6, 0.8, 1, 1.5])
_BUILDING: list[Colour] = [
    (0.5, 0.5, 0.5),
    (0.7, 0.7, 0.68),
    (0.76, 0.68, 0.55),
    (0.56, 0.31, 0.23),
    (0.45, 0.36, 0.29),
    (0.86, 0.85, 0.82),
    (0.85, 0.78, 0.55),
    (0.8, 0.62, 0.58),
    (0.3, 0.3, 0.32),
    (0.36, 0.45, 0.55),
    (0.5, 0.55, 0.45),
    (0.62, 0.58, 0.52),
]
_FENCE: list[Colour] = [
    (0.45, 0.45, 0.47),
    (0.25, 0.26, 0.27),
    (0.15, 0.3, 0.2),
    (0.45, 0.32, 0.2),
    (0.82, 0.82, 0.8),
    (0.6, 0.6, 0.58),
]
_LEAVES: list[Colour] = [
    (0.18, 0.32, 0.1),
    (0.25, 0.4, 0.15),
    (0.12, 0.25, 0.12),
    (0.35, 0.45, 0.2),
    (0.08, 0.17, 0.08),
    (0.3, 0.36, 0.18),
    (0.55, 0.45, 0.15),
    (0.5, 0.3, 0.12),
]
_LEAF_CUM = _cum([3, 3, 3, 2, 2, 2, 0.7, 0.5])
_TERRAIN: list[Colour] = [
    (0.3, 0.45, 0.18),
    (0.55, 0.5, 0.3),
    (0.45, 0.36, 0.26),
    (0.5, 0.48, 0.45),
    (0.25, 0.48, 0.2),
    (0.4, 0.42, 0.22),
]
_ROAD: list[Colour] = [
    (0.32, 0.32, 0.33),
    (0.42, 0.42, 0.42),
    (0.24, 0.24, 0.26),
    (0.5, 0.49, 0.47),
    (0.36, 0.34, 0.33),
]
_SIDEWALK: list[Colour] = [
    (0.62, 0.62, 0.6),
    (0.7, 0.68, 0.62),
    (0.6, 0.43, 0.38),
    (0.45, 0.45, 0.46),
    (0.7, 0.62, 0.5),
    (0.52, 0.5, 0.48),
]
_POLE: list[Colour] = [
    (0.45, 0.45, 0.47),
    (0.25, 0.25, 0.27),
    (0.66, 0.66, 0.66),
    (0.15, 0.28, 0.2),
    (0.38, 0.28, 0.18),
    (0.72, 0.62, 0.12),
]
_SIGN: list[Colour] = [
    (0.78, 0.08, 0.1),
    (0.1, 0.25, 0.66),
    (0.9, 0.78, 0.1),
    (0.1, 0.45, 0.25),
    (0.9, 0.9, 0.9),
    (0.92, 0.5, 0.1),
]
_SKIN: list[Colour] = [(0.95, 0.8, 0.68), (0.85, 0.65, 0.5), (0.6, 0.42, 0.3), (0.4, 0.27, 0.18)]
_HAIR: list[Colour] = [(0.08, 0.06, 0.05), (0.35, 0.22, 0.12), (0.7, 0.6, 0.4), (0.5, 0.5, 0.5)]
_TROUSERS: list[Colour] = [
    (0.15, 0.2, 0.35),
    (0.07, 0.07, 0.08),
    (0.4, 0.4, 0.42),
    (0.6, 0.55, 0.42),
    (0.35, 0.25, 0.18),
    (0.2, 0.3, 0.2),
]
_BARK: list[Colour] = [(0.3, 0.22, 0.15), (0.4, 0.36, 0.3), (0.2, 0.17, 0.13)]
_CLUTTER: list[Colour] = [(0.15, 0.35, 0.2), (0.6, 0.1, 0.1), (0.3, 0.3, 0.32), (0.55, 0.45, 0.2), (0.2, 0.25, 0.5)]
_GLASS: list[Colour] = [(0.12, 0.14, 0.18), (0.3, 0.36, 0.45), (0.55, 0.6, 0.65), (0.2, 0.2, 0.2)]
_BLACK: Colour = (0.05, 0.05, 0.055)
_WHITE: Colour = (0.88, 0.88, 0.86)
_YELLOW: Colour = (0.88, 0.72, 0.18)
_RED_LAMP: Colour = (0.8, 0.05, 0.05)
_HEAD_LAMP: Colour = (1.0, 0.95, 0.8)

_TIMES = ("day", "overcast", "dusk", "night", "fog")
_TIMES_CUM = _cum([0.45, 0.22, 0.15, 0.1, 0.08])
_STYLES = ("city", "suburb", "rural")
_STYLES_CUM = _cum([0.45, 0.35, 0.2])
_VEHICLES = ("car",) * 6 + ("van", "van", "truck", "bus", "bike")

# roadside block kinds: building, tree row, hedge, wall, fence (open ground is no block)
_BUILDING_K, _TREES_K, _HEDGE_K, _WALL_K, _FENCE_K, _OPEN_K = range(6)
_FRONT_CUM = {
    "city": _cum([0.55, 0.05, 0.07, 0.1, 0.1, 0.13]),
    "suburb": _cum([0.3, 0.15, 0.15, 0.1, 0.15, 0.15]),
    "rural": _cum([0.05, 0.25, 0.1, 0.05, 0.3, 0.25]),
}
_BACK_CUM = {
    "city": _cum([0.85, 0.05, 0, 0, 0, 0.1]),
    "suburb": _cum([0.4, 0.45, 0, 0, 0, 0.15]),
    "rural": _cum([0.08, 0.6, 0, 0, 0, 0.32]),
}
_BLOCK_H = {
    style: (np.array([1.2, 1.5, 0.25, 0.2, 0.25]), np.array([tall, 4.5, 0.6, 0.7, 0.55]))
    for style, tall in (("city", 12.0), ("suburb", 4.0), ("rural", 3.0))
}
_BLOCK_DEPTH = (np.array([1.5, 0.3, 0.3, 0.1, 0.05]), np.array([5.0, 2.0, 0.6, 0.1, 0.05]))
_BLOCK_CLS = np.array([BUILDING, VEGETATION, VEGETATION, FENCE, FENCE])
_BLOCK_MAT = np.array([_M_WALL, _M_LEAF, _M_LEAF, _M_WALL, _M_METAL])
_BLOCK_PAL = [np.array(_BUILDING), np.array(_LEAVES[:6]), np.array(_FENCE)]  # walls share building colours
_QN = np.geomspace(6.0, 1 / 400, 400)  # inverse distances, near -> far, sampled along facade lines


def _choose(rng: np.random.Generator, cum: list[float]) -> int:
    """Index drawn with the weights whose running sums are ``cum`` (much faster than ``rng.choice``)."""
    return min(bisect.bisect_right(cum, rng.random() * cum[-1]), len(cum) - 1)


def _pick(
    rng: np.random.Generator, colours: list[Colour], jitter: float = 0.08, cum: list[float] | None = None
) -> Colour:
    """One of ``colours`` with brightness and hue jitter."""
    r = rng.random(5).tolist()
    n = len(colours)
    i = min(int(r[0] * n), n - 1) if cum is None else min(bisect.bisect_right(cum, r[0] * cum[-1]), n - 1)
    base = colours[i]
    g = 1 + 1.5 * jitter * (2 * r[1] - 1)
    return (
        min(max(base[0] * g + jitter * (r[2] - 0.5), 0.0), 1.0),
        min(max(base[1] * g + jitter * (r[3] - 0.5), 0.0), 1.0),
        min(max(base[2] * g + jitter * (r[4] - 0.5), 0.0), 1.0),
    )


def _hsv_colour(rng: np.random.Generator) -> Colour:
    """A random clothing colour: any hue, often muted."""
    h, s, v = rng.random(3).tolist()
    return colorsys.hsv_to_rgb(h, (0.85 * s) ** 1.3, 0.1 + 0.8 * v)


def _scale(c: Colour | np.ndarray, k: float) -> Colour:
    return (min(c[0] * k, 1.0), min(c[1] * k, 1.0), min(c[2] * k, 1.0))


def _mix(a: Colour | np.ndarray, b: Colour | np.ndarray, t: float) -> Colour:
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t)


class _Canvas:
    """Per-pixel colour-table id and brightness, painted back to front.

    Each table entry is (colour, class id, material); id 0 is the sky, whose colours are a gradient
    filled in at the end. Painting touches two 2-D maps only, which keeps scenes cheap.
    """

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.cid = np.zeros((h, w), np.uint16)
        self.bright = np.ones((h, w), np.float32)
        self.colours: list[Colour] = [(0.0, 0.0, 0.0)]
        self.classes: list[int] = [SKY]
        self.mats: list[int] = [_M_SKY]
        self.ys = np.arange(h, dtype=np.float32) + np.float32(0.5)  # pixel centres
        self.xs = np.arange(w, dtype=np.float32) + np.float32(0.5)

    def add(self, colour: Colour, cls: int, mat: int) -> int:
        """A new table entry; returns its id."""
        self.colours.append(colour)
        self.classes.append(cls)
        self.mats.append(mat)
        return len(self.colours) - 1

    def box(self, x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int] | None:
        """Pixel rows/cols whose centres lie in [x0, x1) x [y0, y1), clipped; None when empty."""
        i0 = max(0, math.ceil(y0 - 0.5))
        i1 = min(self.h, math.ceil(y1 - 0.5))
        j0 = max(0, math.ceil(x0 - 0.5))
        j1 = min(self.w, math.ceil(x1 - 0.5))
        if i0 >= i1 or j0 >= j1:
            return None
        return i0, i1, j0, j1

    def fill(
        self,
        b: tuple[int, int, int, int],
        m: np.ndarray | None,
        cid: int | np.ndarray,
        bright: float | np.ndarray = 1.0,
    ) -> None:
        """Set id and brightness in box ``b`` where ``m`` holds (None: everywhere); arrays broadcast."""
        i0, i1, j0, j1 = b
        c, s = self.cid[i0:i1, j0:j1], self.bright[i0:i1, j0:j1]
        if m is None:
            c[...] = cid
            s[...] = bright
            return
        if isinstance(cid, int):
            c[m] = cid
        else:
            np.copyto(c, cid, casting="unsafe", where=m)
        if isinstance(bright, float):
            s[m] = bright
        else:
            np.copyto(s, bright, casting="unsafe", where=m)

    def rect(self, x0: float, y0: float, x1: float, y1: float, cid: int, grow: bool = True) -> None:
        """Axis-aligned rectangle; with ``grow`` thin ones widen to one pixel so they never vanish."""
        if grow:
            if x1 - x0 < 1.0:
                x0 = 0.5 * (x0 + x1) - 0.5
                x1 = x0 + 1.0
            if y1 - y0 < 1.0:
                y0 = 0.5 * (y0 + y1) - 0.5
                y1 = y0 + 1.0
        b = self.box(x0, y0, x1, y1)
        if b is not None:
            i0, i1, j0, j1 = b
            self.cid[i0:i1, j0:j1] = cid
            self.bright[i0:i1, j0:j1] = 1.0

    def trap(self, y0: float, y1: float, xl0: float, xr0: float, xl1: float, xr1: float, cid: int) -> None:
        """Trapezoid with horizontal top (row y0: xl0..xr0) and bottom (row y1: xl1..xr1), >= 1 px wide."""
        b = self.box(min(xl0, xl1), y0, max(xr0, xr1), y1)
        if b is None:
            return
        i0, i1, j0, j1 = b
        s = (self.ys[i0:i1, None] - y0) * (1.0 / max(y1 - y0, 1e-6))
        left = xl0 + s * (xl1 - xl0)
        right = xr0 + s * (xr1 - xr0)
        m = np.abs(self.xs[None, j0:j1] - (left + right) * 0.5) < np.maximum(right - left, 1.0) * 0.5
        self.fill(b, m, cid)

    def ellipse(
        self, cx: float, cy: float, rx: float, ry: float, cid: int, rough: np.ndarray | None = None, amp: float = 0.0
    ) -> None:
        """Filled ellipse; a noise field ``rough`` frays the outline (foliage)."""
        rx, ry = max(rx, 0.5), max(ry, 0.5)
        b = self.box(cx - rx, cy - ry, cx + rx, cy + ry)
        if b is None:
            return
        i0, i1, j0, j1 = b
        r2 = ((self.ys[i0:i1, None] - cy) * (1 / ry)) ** 2 + ((self.xs[None, j0:j1] - cx) * (1 / rx)) ** 2
        m = r2 < (1.0 + amp * rough[i0:i1, j0:j1]) if rough is not None else r2 < 1.0
        self.fill(b, m, cid)

    def shadow(self, cx: float, cy: float, rx: float, ry: float, factor: float) -> None:
        """Darken an elliptic patch (a cast shadow) without touching ids."""
        rx, ry = max(rx, 0.5), max(ry, 0.5)
        b = self.box(cx - rx, cy - ry, cx + rx, cy + ry)
        if b is None:
            return
        i0, i1, j0, j1 = b
        r2 = ((self.ys[i0:i1, None] - cy) * (1 / ry)) ** 2 + ((self.xs[None, j0:j1] - cx) * (1 / rx)) ** 2
        self.bright[i0:i1, j0:j1][r2 < 1.0] *= np.float32(factor)


class _Camera:
    """Pinhole camera over a flat ground; lateral X and distance d in lane widths (about 3.5 m).

    A ground point (X, d) lands at column xv + f X / d + bend(d), row yh + f c / d; a point z above
    it at row yh + f (c - z) / d. The road bends like a parabola up to ``dcap`` and runs straight
    after it, so its far end has a vanishing point of its own.
    """

    def __init__(self, h: int, w: int, fov: float, pitch: float, yaw: float, c: float, k: float, dcap: float) -> None:
        self.f = 0.5 * max(w, h * 4 / 3) / math.tan(math.radians(fov) / 2)
        self.yh = h / 2 + pitch * self.f
        self.xv = w / 2 + yaw * self.f
        self.c, self.k, self.dcap = c, k, dcap

    def bend(self, d: float) -> float:
        e = max(d - self.dcap, 0.0)
        return self.f * self.k * (d - e * e / d)

    def bend_a(self, d: np.ndarray) -> np.ndarray:
        e = np.maximum(d - self.dcap, 0.0)
        return self.f * self.k * (d - e * e / d)

    def x(self, lateral: float, d: float) -> float:
        return self.xv + self.f * lateral / d + self.bend(d)

    def y(self, z: float, d: float) -> float:
        """Row of height z (lane widths) above the ground at distance d."""
        return self.yh + self.f * (self.c - z) / d

    def far_x(self) -> float:
        """Column of the vanishing point of the road's far, straight end."""
        return self.xv + self.f * self.k * 2 * self.dcap


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Value noise: random values on a grid of ``cell`` pixels, smoothly interpolated (std about 1)."""
    gh, gw = int(h / cell) + 3, int(w / cell) + 3
    g = (rng.random((gh, gw), dtype=np.float32) - np.float32(0.5)) * np.float32(5.5)
    ty = np.arange(h, dtype=np.float32) * np.float32(1 / cell)
    tx = np.arange(w, dtype=np.float32) * np.float32(1 / cell)
    iy, ix = ty.astype(np.int64), tx.astype(np.int64)
    fy, fx = ty - iy, tx - ix
    fy = fy * fy * (3 - 2 * fy)
    fx = fx * fx * (3 - 2 * fx)
    rows = g[iy] * (1 - fy)[:, None] + g[iy + 1] * fy[:, None]
    return rows[:, ix] * (1 - fx) + rows[:, ix + 1] * fx


def _blur(img: np.ndarray, r: int) -> np.ndarray:
    """Separable box blur of radius r (edges repeated): shifted sums for r = 1, cumulative sums else."""
    if r <= 0:
        return img
    if r == 1:
        p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
        v = p[:-2] + p[1:-1] + p[2:]
        return (v[:, :-2] + v[:, 1:-1] + v[:, 2:]) * np.float32(1 / 9)
    n = 2 * r + 1
    for axis in (0, 1):
        pad = [(0, 0)] * img.ndim
        pad[axis] = (r + 1, r)
        c = np.cumsum(np.pad(img, pad, mode="edge"), axis=axis, dtype=np.float32)
        size = img.shape[axis]
        img = np.take(c, np.arange(n, n + size), axis=axis) - np.take(c, np.arange(size), axis=axis)
        img *= np.float32(1 / n)
    return img


class _Scene:
    """One scene: the layout comes from ``rng`` (size-free), pixel noise from ``noise_rng``."""

    def __init__(self, rng: np.random.Generator, noise_rng: np.random.Generator, h: int, w: int) -> None:
        self.rng, self.noise_rng = rng, noise_rng
        self.cv = _Canvas(h, w)
        self.h, self.w = h, w
        self.scale = max(h, w * 0.75) / 96.0  # pixel scale relative to the tutorial's 96x128
        # unit-variance noise fields (uniform: much faster than gaussian): per pixel, blotches, patches
        self.fine = (noise_rng.random((h, w), dtype=np.float32) - np.float32(0.5)) * np.float32(3.46)
        self.mid = _smooth_noise(noise_rng, h, w, max(1.5, 2.5 * self.scale))
        self.low = _smooth_noise(noise_rng, h, w, max(3.0, 14.0 * self.scale))
        self._facade_x: np.ndarray | None = None

    def add(self, colour: Colour, cls: int, mat: int) -> int:
        return self.cv.add(colour, cls, mat)

    # ---------------------------------------------------------------- layout
    def layout(self) -> None:
        """Camera, road, sidewalks, style of the street and the light: all size-free."""
        rng = self.rng
        self.tod = _TIMES[_choose(rng, _TIMES_CUM)]
        self.style = _STYLES[_choose(rng, _STYLES_CUM)]
        heading = 0.0 if rng.random() < 0.45 else rng.uniform(-0.5, 0.5)
        dcap = rng.uniform(12, 40)
        self.cam = _Camera(
            self.h,
            self.w,
            fov=rng.uniform(75, 100),
            pitch=rng.uniform(-0.14, 0.07),
            yaw=rng.uniform(-0.18, 0.18),
            c=rng.uniform(0.36, 0.55),
            k=heading / (2 * dcap),
            dcap=dcap,
        )
        self.n_lanes = n = (1, 2, 2, 3, 3, 4, 4, 5)[int(rng.integers(8))]
        self.lw = rng.uniform(0.9, 1.1)
        own = int(rng.integers(n))  # the camera's lane
        self.XL = -(own + rng.uniform(0.35, 0.65)) * self.lw
        self.XR = self.XL + n * self.lw
        self.n_left = n // 2 if n >= 3 and rng.random() < 0.5 else (int(rng.integers(n)) if n > 1 else 0)
        sw_p = {"city": 0.95, "suburb": 0.85, "rural": 0.35}[self.style]
        self.sw = [rng.uniform(0.4, 1.3) if rng.random() < sw_p else 0.0 for _ in range(2)]
        lo, hi = (0.0, 0.4) if self.style == "city" else (0.2, 2.0)
        self.setback = [rng.uniform(lo, hi) for _ in range(2)]
        paved = {"city": 0.6, "suburb": 0.2, "rural": 0.0}[self.style]
        self.setback_paved = [rng.random() < paved for _ in range(2)]
        self.light_setup()

    def light_setup(self) -> None:
        """Sky colours, exposure, colour cast, saturation, contrast and haze for the time of day."""
        rng, tod = self.rng, self.tod
        u = rng.uniform
        if tod == "day":
            zen = np.array([0.2, 0.4, 0.78]) + u(-0.08, 0.08, 3)
            hor = np.array([0.62, 0.76, 0.92]) + u(-0.08, 0.06, 3)
            self.gain, self.tint, self.sat = u(0.9, 1.2), 1 + u(-0.06, 0.06, 3), u(0.85, 1.3)
        elif tod == "overcast":
            g = u(0.55, 0.85)
            zen = np.full(3, g * u(0.8, 0.95)) + u(-0.03, 0.03, 3)
            hor = np.full(3, g) + u(-0.03, 0.03, 3)
            self.gain, self.tint, self.sat = u(0.75, 1.0), 1 + u(-0.04, 0.04, 3), u(0.55, 0.85)
        elif tod == "dusk":
            zen = np.array([0.22, 0.22, 0.45]) + u(-0.08, 0.08, 3)
            hor = np.array([0.95, 0.6, 0.35]) + u(-0.1, 0.05, 3)
            self.gain, self.sat = u(0.6, 0.85), u(0.8, 1.2)
            self.tint = np.array([1.12, 0.92, 0.75]) + u(-0.05, 0.05, 3)
        elif tod == "night":
            zen = np.array([0.02, 0.03, 0.08]) + u(0, 0.03, 3)
            hor = np.array([0.15, 0.15, 0.22]) + u(-0.04, 0.08, 3)
            self.gain, self.sat = u(0.5, 0.7), u(0.6, 1.0)
            self.tint = np.array([0.85, 0.92, 1.15]) + u(-0.05, 0.05, 3)
        else:  # fog
            zen = hor = np.full(3, u(0.6, 0.85)) + u(-0.02, 0.02, 3)
            self.gain, self.tint, self.sat = u(0.8, 1.0), 1 + u(-0.03, 0.03, 3), u(0.5, 0.8)
        self.zen = np.clip(zen, 0, 1).astype(np.float32)
        self.hor = np.clip(hor, 0, 1).astype(np.float32)
        self.contrast = u(0.75, 1.25)
        self.haze = {"fog": u(0.6, 0.85), "overcast": u(0.2, 0.45)}.get(tod, u(0.1, 0.35))
        self.sun_side = 1 if rng.random() < 0.5 else -1
        self.sunny = tod == "day" and rng.random() < 0.8
        self.lit = tod in ("night", "dusk")

    # ---------------------------------------------------------------- drawing
    def draw(self) -> None:
        self.layout()
        self.draw_skyline()
        self.draw_ground()
        for back in (True, False):
            for side in (-1, 1):
                self.draw_side(side, back)
        self.draw_objects()
        self.draw_hood()

    def draw_skyline(self) -> None:
        """Far buildings and tree lines on the horizon, hazy with distance."""
        cv, cam, rng = self.cv, self.cam, self.rng
        angle = (cv.xs - cam.far_x()) / cam.f  # column direction, size-free
        grid = np.linspace(-3, 3, 601)
        layers = []
        if self.style != "rural" and rng.random() < 0.8:
            edges = np.sort(rng.uniform(-3, 3, 120))
            tall = 0.11 if self.style == "city" else 0.05
            heights = rng.uniform(0.01, tall, 121) * (rng.random(121) < 0.85)
            colour = _pick(rng, _BUILDING, 0.1)
            layers.append((heights[np.searchsorted(edges, grid)], BUILDING, colour, _M_WALL))
        if rng.random() < 0.75:
            ph = rng.uniform(0, 6, 3)
            wave = 0.5 * np.sin(grid * 23 + ph[0]) + 0.3 * np.sin(grid * 61 + ph[1]) + 0.2 * np.sin(grid * 140 + ph[2])
            prof = rng.uniform(0.01, 0.04) * (1 + wave)
            if rng.random() < 0.3:  # hills
                prof = prof + rng.uniform(0.02, 0.06) * (1 + np.sin(grid * rng.uniform(2, 5) + ph[0]))
            layers.append((prof, VEGETATION, _pick(rng, _LEAVES, 0.1, _LEAF_CUM), _M_LEAF))
        haze = rng.uniform(0.35, 0.7)
        for prof, cls, colour, mat in layers:
            top = cam.yh - cam.f * np.interp(angle, grid, prof)
            b = cv.box(0, float(top.min()), self.w, cam.yh + 1.0)
            if b is not None:
                i0, i1, j0, j1 = b
                cid = self.add(_mix(colour, self.hor, haze), cls, mat)
                cv.fill(b, cv.ys[i0:i1, None] >= top[None, :], cid)

    def draw_ground(self) -> None:
        """Terrain, paving, sidewalks, road, markings, median and cast shadows, all per row."""
        cv, cam, rng = self.cv, self.cam, self.rng
        self.crosswalk: float | None = None
        i0 = min(self.h, max(0, math.ceil(cam.yh - 0.5 + 1e-3)))  # first ground row
        q = (cv.ys[i0:] - np.float32(cam.yh)) * np.float32(1 / (cam.f * cam.c))  # inverse distance per row
        d = 1.0 / q
        bend = cam.bend_a(d).astype(np.float32)
        X = (cv.xs[None, :] - np.float32(cam.xv) - bend[:, None]) * (np.float32(1 / cam.f) * d[:, None])
        cid, bright = cv.cid[i0:], cv.bright[i0:]
        px = d * (1 / cam.f)  # one pixel, in lane widths, per row

        def paint(m: np.ndarray, colour: Colour, cls: int, mat: int) -> None:
            cid[m] = self.add(colour, cls, mat)

        terrain = _pick(rng, _TERRAIN, 0.1)
        cid[:] = self.add(terrain, TERRAIN, _M_GRASS if terrain[1] > terrain[0] else _M_DIRT)
        bright[:] = 1.0
        XL, XR, sw = self.XL, self.XR, self.sw
        pave = _pick(rng, _SIDEWALK, 0.08)
        for k, side in enumerate((-1, 1)):
            edge = XL if side < 0 else XR
            outer = edge + side * sw[k]
            far = outer + side * self.setback[k]
            if self.setback_paved[k]:
                paint(
                    (X >= min(outer, far)) & (X < max(outer, far)),
                    _scale(pave, rng.uniform(0.9, 1.05)),
                    SIDEWALK,
                    _M_PAVING,
                )
            if sw[k] > 0:
                m = (X >= min(edge, outer)) & (X < max(edge, outer))
                paint(m, pave, SIDEWALK, _M_PAVING)
                tile = rng.uniform(0.25, 0.5)
                joints = m & (((X * (1 / tile)) % 1.0 < 0.08) | ((d * (1 / tile)) % 1.0 < 0.08)[:, None])
                bright[joints] = 0.85
                paint(m & (np.abs(X - edge) < 0.06), _scale(pave, 1.2), SIDEWALK, _M_PAVING)  # curb
            elif rng.random() < 0.5:  # gravel shoulder
                a, b = sorted((edge, edge + side * 0.3))
                paint((X >= a) & (X < b), _pick(rng, _TERRAIN[2:4], 0.08), TERRAIN, _M_DIRT)
        asphalt = _pick(rng, _ROAD, 0.08)
        road = (X >= XL) & (X < XR)
        paint(road, asphalt, ROAD, _M_ASPHALT)
        track = np.abs(((X - XL) * (1 / self.lw)) % 1.0 - 0.5)
        bright[road & (track > 0.14) & (track < 0.3)] = rng.uniform(0.85, 0.97)  # tyre tracks
        self._markings(X, d, px, road, asphalt, pave, terrain, paint)
        # cast shadows: the sun-side buildings over part of the road, dappled shade under trees
        if self.sunny and rng.random() < 0.6:
            reach = (XL if self.sun_side > 0 else XR) + self.sun_side * rng.uniform(-1.0, 2.5)
            bright[(X < reach) if self.sun_side > 0 else (X > reach)] *= np.float32(rng.uniform(0.5, 0.75))
        if self.sunny and rng.random() < 0.3:
            dapple = (self.mid[i0:] > rng.uniform(0.3, 1.0)) & (X < XR + 1.5) & (X > XL - 1.5)
            bright[dapple] *= np.float32(rng.uniform(0.55, 0.75))

    def _markings(
        self,
        X: np.ndarray,
        d: np.ndarray,
        px: np.ndarray,
        road: np.ndarray,
        asphalt: Colour,
        pave: Colour,
        terrain: Colour,
        paint: Callable[[np.ndarray, Colour, int, int], None],
    ) -> None:
        """Lane markings (dashed, double yellow, or a median), edge lines and a zebra crossing."""
        rng, XL, XR = self.rng, self.XL, self.XR
        worn = rng.uniform(0, 0.35)
        white = _mix(_scale(_WHITE, rng.uniform(0.8, 1.0)), asphalt, worn)
        yellow = _mix(_scale(_YELLOW, rng.uniform(0.8, 1.0)), asphalt, worn)
        half = np.maximum(rng.uniform(0.025, 0.04), 0.4 * px)[:, None]
        period = rng.uniform(2.2, 3.5)
        dash = (((d / period) + rng.uniform(0, 1)) % 1.0 < rng.uniform(0.3, 0.5))[:, None]
        median = 0 < self.n_left < self.n_lanes and rng.random() < 0.15
        for i in range(1, self.n_lanes):
            xb = XL + i * self.lw
            near = np.abs(X - xb)
            if i == self.n_left:
                if median:
                    mw = rng.uniform(0.15, 0.4)
                    paint(near < mw, _scale(pave, 1.1), SIDEWALK, _M_PAVING)
                    paint(near < mw - 0.07, terrain, TERRAIN, _M_GRASS)
                elif rng.random() < 0.5:
                    paint((np.abs(near - 0.07) < half), yellow, LANE, _M_PAINT)
                else:
                    paint((near < half) & dash, yellow if rng.random() < 0.4 else white, LANE, _M_PAINT)
            else:
                paint((near < half) & dash, white, LANE, _M_PAINT)
        if rng.random() < 0.7:  # edge lines
            paint((np.abs(X - XL - 0.12) < half) | (np.abs(X - XR + 0.12) < half), white, LANE, _M_PAINT)
        if rng.random() < 0.25:  # zebra crossing
            dz = rng.uniform(2.5, 12)
            rows = ((d > dz) & (d < dz + rng.uniform(0.6, 1.0)))[:, None]
            stripe = rng.uniform(0.12, 0.2)
            paint(road & rows & ((X - XL) % (2 * stripe) < stripe), white, LANE, _M_PAINT)
            self.crosswalk = dz

    # ---------------------------------------------------------------- roadside blocks
    def facade_columns(self, side: int, lateral: float) -> np.ndarray:
        """Inverse distance q at which each column sees the facade line X = ``lateral`` (nan: never)."""
        cam, qn = self.cam, _QN
        if self._facade_x is None:
            self._facade_x = cam.xv + cam.bend_a(1.0 / qn)
        xn = self._facade_x + cam.f * lateral * qn
        bad = np.nonzero(np.diff(xn) * (-side) <= 0)[0]  # keep the near branch of a curving line
        if len(bad):
            xn, qn = xn[: bad[0] + 1], qn[: bad[0] + 1]
        if side > 0:
            return np.interp(self.cv.xs, xn[::-1], qn[::-1], left=np.nan, right=qn[0])
        return np.interp(self.cv.xs, xn, qn, left=qn[0], right=np.nan)

    def make_blocks(self, back: bool) -> dict[str, np.ndarray] | None:
        """One row of roadside blocks along the road, as parallel arrays (one entry per block)."""
        rng = self.rng
        cum = (_BACK_CUM if back else _FRONT_CUM)[self.style]
        starts, ends, kinds = [], [], []
        d = 0.2 + 1.8 * rng.random()
        end = 60 + 100 * rng.random()
        while d < end:
            u0, u1, u2 = rng.random(3).tolist()
            length = (1.5 + 8.5 * u0) * (1 + d / 40)
            kind = min(bisect.bisect_right(cum, u1 * cum[-1]), len(cum) - 1)
            if kind != _OPEN_K:
                starts.append(d)
                ends.append(d + length)
                kinds.append(kind)
            d += length + (0.3 + 7.7 * u2 if u2 < 0.35 else 0.0)
        n = len(kinds)
        if n == 0:
            return None
        k = np.array(kinds)
        U = rng.random((n, 16))
        lo, hi = _BLOCK_H[self.style]
        h = (lo[k] + (hi[k] - lo[k]) * U[:, 0]) * np.where(back & (k == _BUILDING_K), 1.4, 1.0)
        depth = _BLOCK_DEPTH[0][k] + (_BLOCK_DEPTH[1][k] - _BLOCK_DEPTH[0][k]) * U[:, 1]
        pal = np.where((k == _TREES_K) | (k == _HEDGE_K), 1, np.where(k == _FENCE_K, 2, 0))
        cols = np.stack(
            [
                _BLOCK_PAL[p][np.minimum((U[:, 2 + p] * len(_BLOCK_PAL[p])).astype(int), len(_BLOCK_PAL[p]) - 1)]
                for p in range(3)
            ],
            axis=1,
        )
        col = np.clip(cols[np.arange(n), pal] * (0.88 + 0.24 * U[:, 5:6]) + 0.08 * (U[:, 6:9] - 0.5), 0, 1)
        glass = np.array(_GLASS)[np.minimum((U[:, 9] * len(_GLASS)).astype(int), len(_GLASS) - 1)]
        glass = glass * (0.85 + 0.3 * U[:, 10:11]) + self.hor * 0.15
        if self.lit:  # lit windows at dusk and night
            warm = np.array([1.0, 0.85, 0.55]) * (0.8 + 0.4 * U[:, 11:12])
            glass = np.where(U[:, 10:11] < 0.5, warm, glass)
        f32 = np.float32
        return {
            "start": np.array(starts),
            "end": np.array(ends),
            "h": h.astype(f32),
            "depth": depth,
            "cls": _BLOCK_CLS[k],
            "mat": _BLOCK_MAT[k],
            "col": col,
            "glass": glass,
            "windows": (k == _BUILDING_K) & (U[:, 11] < 0.85),
            "ws": (0.35 + 0.55 * U[:, 12]).astype(f32),
            "wf": (0.35 + 0.35 * U[:, 13]).astype(f32),
            "fl": (0.8 + 0.2 * U[:, 14]).astype(f32),
            "post": (0.4 + 0.6 * U[:, 13]).astype(f32),
            "bump": np.where(k == _TREES_K, 0.2 + 0.25 * U[:, 15], np.where(k == _HEDGE_K, 0.08, 0)).astype(f32),
            "ph": (U[:, 2:5] * 6.0).astype(f32),
            "rails": 1 + (U[:, 14] * 3).astype(int),
            "open": (k == _FENCE_K) & (U[:, 15] > 0.25),
        }

    def draw_side(self, side: int, back: bool) -> None:
        """One row of blocks on one side: end faces one by one, then all facades in one pass."""
        cv, cam, rng = self.cv, self.cam, self.rng
        k = 0 if side < 0 else 1
        lateral = (self.XL if side < 0 else self.XR) + side * (self.sw[k] + self.setback[k])
        if back:
            lateral += side * (2.0 + 4.0 * rng.random())
        bl = self.make_blocks(back)
        if bl is None:
            return
        light = 1.0 if side == -self.sun_side or not self.sunny else 0.6 + 0.2 * rng.random()
        n = len(bl["start"])
        base = len(cv.colours)  # ids: base + i facade, base + n + i end face, base + 2n + i windows
        cls, mat = bl["cls"].tolist(), bl["mat"].tolist()
        table = np.concatenate([bl["col"] * light, bl["col"] * (0.72 * light), bl["glass"]])
        cv.colours += np.minimum(table, 1).tolist()
        cv.classes += cls * 3
        cv.mats += mat * 2 + [_M_GLASS] * n
        # near end faces, far to near (nearer facades, drawn later, cover them)
        for i in np.argsort(-bl["start"]).tolist():
            d0 = float(bl["start"][i])
            if d0 < 0.3:
                continue
            x0, x1 = cam.x(lateral, d0), cam.x(lateral + side * float(bl["depth"][i]), d0)
            y0, y1 = cam.y(float(bl["h"][i]), d0), cam.y(0.0, d0)
            if y1 - y0 >= 0.7 and abs(x1 - x0) >= 0.5:
                cv.rect(min(x0, x1), y0, max(x0, x1), y1, base + n + i, grow=False)
        q = self.facade_columns(side, lateral)
        valid = np.isfinite(q)
        q = np.where(valid, q, 1.0).astype(np.float32)
        d = 1.0 / q
        idx = np.clip(np.searchsorted(bl["start"], d, side="right") - 1, 0, n - 1)
        valid &= (d >= bl["start"][idx]) & (d < bl["end"][idx])
        j = np.nonzero(valid)[0]
        if len(j) == 0:
            return
        ph = bl["ph"][idx]
        wave = 0.5 * np.sin(d * 2.3 + ph[:, 0]) + 0.3 * np.sin(d * 5.9 + ph[:, 1]) + 0.2 * np.sin(d * 13.7 + ph[:, 2])
        hgt = bl["h"][idx] * (1 + bl["bump"][idx] * wave)
        top = cam.yh + cam.f * (cam.c - hgt) * q
        bot = cam.yh + cam.f * cam.c * q
        b = cv.box(float(j[0]), float(top[valid].min()), float(j[-1] + 1), float(bot[valid].max()))
        if b is None:
            return
        i0, i1, j0, j1 = b
        sl = slice(j0, j1)
        ids, qs, ds, hs = idx[sl], q[sl], d[sl], hgt[sl]
        Y = cv.ys[i0:i1, None]
        m = valid[None, sl] & (Y >= top[None, sl]) & (Y < bot[None, sl])
        z = cam.c - (Y - cam.yh) * (1 / (cam.f * qs))[None, :]  # height above the ground, lane widths
        cid, bright = self._windows(bl, ids, ds, qs, z, hs, base, n)
        is_f = bl["open"][ids]
        if is_f.any():  # open fences: posts and rails only, the rest shows what is behind
            px = 1.0 / (cam.f * qs)
            posts = (ds % bl["post"][ids]) < np.maximum(0.06, 1.2 * px)
            pitch = hs / bl["rails"][ids]
            rail = ((z * (1 / pitch)[None, :]) % 1.0 > 1 - np.maximum(0.12, px / pitch)[None, :]) | (
                z > (hs - 0.05)[None, :]
            )
            m &= ~(is_f & ~posts)[None, :] | rail
        cv.fill(b, m, cid, bright)

    def _windows(
        self,
        bl: dict[str, np.ndarray],
        ids: np.ndarray,
        ds: np.ndarray,
        qs: np.ndarray,
        z: np.ndarray,
        hs: np.ndarray,
        base: int,
        n: int,
    ) -> tuple[np.ndarray, float | np.ndarray]:
        """Colour ids and brightness of facade pixels: the facade's, or its windows' where they show."""
        cam = self.cam
        cid: np.ndarray = (base + ids)[None, :]
        bright: float | np.ndarray = 1.0
        ws = bl["ws"][ids]
        big = bl["windows"][ids] & (ws * cam.f * qs > 2.5)  # windows only where they span a few pixels
        if big.any():
            u = ds / ws
            fl = bl["fl"][ids]
            vz = z * (1 / fl)[None, :]
            vf = vz % 1.0
            win = (
                (big & (u % 1.0 < bl["wf"][ids]))[None, :]
                & (vf > 0.35)
                & (vf < 0.8)
                & (vz > 1)
                & (z < (hs - 0.3 * fl)[None, :])
            )
            cid = np.where(win, base + 2 * n + ids[None, :], cid)
            bright = np.where(
                win,
                ((np.floor(u)[None, :] * 7 + np.floor(vz) * 13) % 5) * np.float32(0.1) + np.float32(0.8),
                np.float32(1.0),
            )
        return cid, bright

    # ---------------------------------------------------------------- objects
    def draw_objects(self) -> None:
        """Vehicles, pedestrians, poles, signs, traffic lights, trees and clutter, far to near."""
        rng, style = self.rng, self.style
        XL, XR = self.XL, self.XR
        objs = self._traffic()
        for k, side in enumerate((-1, 1)):
            objs += self._roadside_rows(k, side) + self._roadside_items(k, side)
        if rng.random() < {"city": 0.45, "suburb": 0.25, "rural": 0.1}[style]:
            side = -1 if rng.random() < 0.5 else 1
            x = (XL if side < 0 else XR) + side * 0.15
            objs.append((rng.uniform(3, 15), x, "light", {"span": XR - XL}))
        if self.crosswalk is not None:
            for _ in range(int(rng.integers(0, 4))):
                objs.append((self.crosswalk + rng.uniform(0.1, 0.7), rng.uniform(XL, XR), "person", {}))
        objs.sort(key=lambda o: -o[0])
        for d, X, kind, p in objs:
            getattr(self, "draw_" + kind)(d, X, p)

    def _traffic(self) -> list[_Obj]:
        """Vehicles in every lane, at least 2.2 lane widths apart."""
        rng, objs = self.rng, list[_Obj]()
        traffic = {"city": 1.6, "suburb": 1.1, "rural": 0.8}[self.style]
        for lane in range(self.n_lanes):
            last = -10.0
            for d in np.sort(rng.uniform(1.2, 45, rng.poisson(traffic))).tolist():
                if d - last >= 2.2:
                    last = d
                    kind = _VEHICLES[int(rng.integers(len(_VEHICLES)))]
                    x = self.XL + (lane + 0.5 + rng.uniform(-0.12, 0.12)) * self.lw
                    objs.append((d, x, kind, {"oncoming": lane < self.n_left}))
        return objs

    def _roadside_rows(self, k: int, side: int) -> list[_Obj]:
        """Rows along one side of the road: parked cars, street lights, trees."""
        rng, style, objs = self.rng, self.style, list[_Obj]()
        edge = self.XL if side < 0 else self.XR
        sw = self.sw[k]
        outer = edge + side * sw
        if rng.random() < {"city": 0.45, "suburb": 0.35, "rural": 0.1}[style]:  # parked cars
            d = rng.uniform(1.5, 5)
            for _ in range(int(rng.integers(1, 6))):
                objs.append((d, edge - side * 0.35, "car", {"oncoming": rng.random() < 0.5}))
                d += rng.uniform(1.5, 4)
        if rng.random() < {"city": 0.75, "suburb": 0.6, "rural": 0.45}[style]:  # street lights
            pitch = rng.uniform(5, 12)
            lamp = {
                "col": _pick(rng, _POLE, 0.08),
                "h": rng.uniform(1.6, 2.6),
                "arm": rng.uniform(0.3, 0.8),
                "w": rng.uniform(0.03, 0.05),
            }
            for d in np.arange(rng.uniform(0.8, pitch), 70, pitch).tolist():
                objs.append((d, edge + side * min(0.15, sw * 0.3 + 0.1), "lamp", lamp))
        if rng.random() < {"city": 0.35, "suburb": 0.6, "rural": 0.5}[style]:  # trees
            pitch = rng.uniform(3, 8)
            d = rng.uniform(0.8, pitch)
            while d < 60:
                objs.append((d, outer - side * 0.2 if sw > 0.5 else outer + side * 0.4, "tree", {}))
                d += pitch * rng.uniform(0.7, 1.3)
        return objs

    def _roadside_items(self, k: int, side: int) -> list[_Obj]:
        """Scattered on one side: signs, pedestrians, clutter."""
        rng, objs = self.rng, list[_Obj]()
        edge = self.XL if side < 0 else self.XR
        sw = self.sw[k]
        for _ in range(int(rng.poisson(1.3))):
            x = edge + side * rng.uniform(0.1, max(sw, 0.25))
            objs.append((1.5 + 22 * rng.random() ** 1.5, x, "sign", {}))
        for _ in range(int(rng.poisson({"city": 3.0, "suburb": 1.6, "rural": 0.8}[self.style]))):
            x = edge + side * (rng.uniform(0.15, max(sw - 0.1, 0.2)) if sw > 0 else rng.uniform(0.1, 0.8))
            objs.append((1.0 + 28 * rng.random() ** 1.5, x, "person", {}))
        if rng.random() < 0.25:
            x = edge + side * rng.uniform(0.1, max(sw, 0.3))
            objs.append((rng.uniform(1.5, 15), x, "clutter", {}))
        return objs

    def _frame(self, d: float, X: float) -> tuple[float, float, float]:
        """Screen column and row of a ground point, and pixels per lane width there."""
        cam = self.cam
        return cam.x(X, d), cam.y(0.0, d), cam.f / d

    # Each draw_* method draws all its random numbers before any size check, so that the random
    # stream, hence the layout, is the same at every image size.
    def draw_car(self, d: float, X: float, p: dict, kind: str = "car") -> None:
        cv, rng = self.cv, self.rng
        cx, gy, s = self._frame(d, X)
        if kind == "van":
            w, h, cab = rng.uniform(0.52, 0.58), rng.uniform(0.5, 0.62), 0.7
        else:
            w, h, cab = rng.uniform(0.48, 0.54), rng.uniform(0.38, 0.45), 0.5
        paint_c = _pick(rng, _CAR_PAINTS, 0.06, _CAR_CUM)
        glass_c = _mix(_pick(rng, _GLASS[:2], 0.05), self.hor, 0.25)
        W, H = w * s, h * s
        if W < 1.5:
            return
        paint = self.add(paint_c, VEHICLE, _M_METAL)
        cv.shadow(cx, gy, 0.62 * W, max(0.08 * s, 0.6), 0.45)
        tyre = self.add(_BLACK, VEHICLE, _M_FLAT)
        cv.rect(cx - 0.46 * W, gy - 0.16 * s, cx - 0.3 * W, gy, tyre)
        cv.rect(cx + 0.3 * W, gy - 0.16 * s, cx + 0.46 * W, gy, tyre)
        low = cab * H
        cv.rect(cx - W / 2, gy - low, cx + W / 2, gy - 0.08 * s, paint)
        cv.trap(gy - H, gy - low, cx - 0.36 * W, cx + 0.36 * W, cx - 0.47 * W, cx + 0.47 * W, paint)
        if W > 5:
            glass = self.add(glass_c, VEHICLE, _M_GLASS)
            cv.trap(
                gy - 0.92 * H, gy - low - 0.02 * H, cx - 0.31 * W, cx + 0.31 * W, cx - 0.41 * W, cx + 0.41 * W, glass
            )
            cv.rect(cx - W / 2, gy - 0.16 * s, cx + W / 2, gy - 0.08 * s, tyre)  # bumper
            lamp = self.add(_HEAD_LAMP if p["oncoming"] else _RED_LAMP, VEHICLE, _M_FLAT)
            ly = gy - low + 0.05 * s
            cv.rect(cx - 0.48 * W, ly, cx - 0.34 * W, ly + 0.06 * s, lamp)
            cv.rect(cx + 0.34 * W, ly, cx + 0.48 * W, ly + 0.06 * s, lamp)
            plate = self.add(_WHITE, VEHICLE, _M_FLAT)
            cv.rect(cx - 0.12 * W, gy - 0.24 * s, cx + 0.12 * W, gy - 0.18 * s, plate)

    def draw_van(self, d: float, X: float, p: dict) -> None:
        self.draw_car(d, X, p, "van")

    def draw_truck(self, d: float, X: float, p: dict, bus: bool = False) -> None:
        cv, rng = self.cv, self.rng
        cx, gy, s = self._frame(d, X)
        W = rng.uniform(0.66, 0.72) * s
        H = (rng.uniform(0.85, 1.05) if bus else rng.uniform(0.9, 1.15)) * s
        colour = _pick(rng, _CAR_PAINTS, 0.06, _CAR_CUM)
        if W < 1.5:
            return
        cv.shadow(cx, gy, 0.6 * W, max(0.08 * s, 0.6), 0.45)
        tyre = self.add(_BLACK, VEHICLE, _M_FLAT)
        cv.rect(cx - 0.45 * W, gy - 0.18 * s, cx - 0.25 * W, gy, tyre)
        cv.rect(cx + 0.25 * W, gy - 0.18 * s, cx + 0.45 * W, gy, tyre)
        cv.rect(cx - W / 2, gy - H, cx + W / 2, gy - 0.12 * s, self.add(colour, VEHICLE, _M_METAL))
        if W > 5:
            if bus:
                glass = self.add(_mix(_GLASS[0], self.hor, 0.2), VEHICLE, _M_GLASS)
                cv.rect(cx - 0.44 * W, gy - 0.92 * H, cx + 0.44 * W, gy - 0.55 * H, glass)
            else:  # the seam between the two rear doors
                seam = self.add(_scale(colour, 0.7), VEHICLE, _M_METAL)
                cv.rect(cx - 0.01 * W, gy - H, cx + 0.01 * W, gy - 0.2 * s, seam)
            red = self.add(_RED_LAMP, VEHICLE, _M_FLAT)
            cv.rect(cx - 0.49 * W, gy - 0.3 * s, cx - 0.38 * W, gy - 0.22 * s, red)
            cv.rect(cx + 0.38 * W, gy - 0.3 * s, cx + 0.49 * W, gy - 0.22 * s, red)

    def draw_bus(self, d: float, X: float, p: dict) -> None:
        self.draw_truck(d, X, p, bus=True)

    def draw_bike(self, d: float, X: float, p: dict) -> None:
        """Motorbike or bicycle (vehicle) with its rider (pedestrian)."""
        cv, rng = self.cv, self.rng
        cx, gy, s = self._frame(d, X)
        colour = _pick(rng, _CAR_PAINTS, 0.06)
        if s * 0.1 >= 1:
            cv.shadow(cx, gy, 0.12 * s, max(0.05 * s, 0.6), 0.5)
            cv.rect(cx - 0.02 * s, gy - 0.2 * s, cx + 0.02 * s, gy, self.add(_BLACK, VEHICLE, _M_FLAT))
            frame = self.add(colour, VEHICLE, _M_METAL)
            cv.rect(cx - 0.06 * s, gy - 0.3 * s, cx + 0.06 * s, gy - 0.15 * s, frame)
        self.draw_person(d, X, {"rider": True})

    def draw_person(self, d: float, X: float, p: dict) -> None:
        cv, rng = self.cv, self.rng
        cx, gy, s = self._frame(d, X)
        rider = p.get("rider", False)
        hp, w, g, arm_u, bag_u = rng.random(5).tolist()
        hp, w, g = (0.42 + 0.12 * hp) * s, (0.12 + 0.04 * w) * s, (0.8 * g - 0.4)  # height, width, stride
        shirt_c, bag_c = _hsv_colour(rng), _hsv_colour(rng)
        legs_c, skin_c = _pick(rng, _TROUSERS, 0.1), _pick(rng, _SKIN, 0.05)
        hair_c = _pick(rng, _CAR_PAINTS if rider else _HAIR, 0.08)  # a rider wears a helmet
        if hp < 3:
            return
        base = gy - (0.24 * s if rider else 0.0)
        shirt, legs = self.add(shirt_c, PERSON, _M_CLOTH), self.add(legs_c, PERSON, _M_CLOTH)
        if rider:
            cv.rect(cx - 0.4 * w, base - 0.2 * hp, cx + 0.4 * w, base, legs)
        else:
            cv.shadow(cx, gy, 0.7 * w, max(0.03 * s, 0.5), 0.6)
            g *= w
            cv.trap(base - 0.48 * hp, base, cx - 0.4 * w, cx - 0.02 * w, cx - 0.45 * w + g, cx - 0.1 * w + g, legs)
            cv.trap(base - 0.48 * hp, base, cx + 0.02 * w, cx + 0.4 * w, cx + 0.1 * w - g, cx + 0.45 * w - g, legs)
        top = base - 0.83 * hp
        cv.trap(top, base - 0.45 * hp, cx - 0.5 * w, cx + 0.5 * w, cx - 0.42 * w, cx + 0.42 * w, shirt)
        skin = self.add(skin_c, PERSON, _M_SKIN)
        arm = shirt if arm_u < 0.6 else skin
        cv.rect(cx - 0.68 * w, top + 0.02 * hp, cx - 0.48 * w, base - 0.48 * hp, arm)
        cv.rect(cx + 0.48 * w, top + 0.02 * hp, cx + 0.68 * w, base - 0.48 * hp, arm)
        r = 0.075 * hp
        cv.ellipse(cx, top - r * 0.95, r * 0.85, r, skin)
        cv.ellipse(cx, top - r * 1.35, r * 0.9, r * 0.65, self.add(hair_c, PERSON, _M_CLOTH))
        if bag_u < 0.2 and not rider:
            bag = self.add(bag_c, PERSON, _M_CLOTH)
            cv.rect(cx + 0.45 * w, base - 0.62 * hp, cx + 0.85 * w, base - 0.4 * hp, bag)

    def draw_lamp(self, d: float, X: float, p: dict) -> None:
        """Street light: pole, arm toward the road, lamp head (all ``pole``)."""
        cv = self.cv
        cx, gy, s = self._frame(d, X)
        top = gy - p["h"] * s
        if gy - top < 3:
            return
        pw = max(p["w"] * s, 1.0)
        cid = self.add(p["col"], POLE, _M_METAL)
        cv.rect(cx - pw / 2, top, cx + pw / 2, gy, cid)
        toward = 1 if X < 0.5 * (self.XL + self.XR) else -1
        ax = self.cam.x(X + toward * p["arm"], d)
        cv.rect(min(cx, ax), top, max(cx, ax), top + max(0.03 * s, 1), cid)
        head = _HEAD_LAMP if self.lit else _scale(p["col"], 0.8)
        cv.rect(ax - 0.08 * s, top, ax + 0.08 * s, top + 0.05 * s, self.add(head, POLE, _M_METAL))

    def draw_sign(self, d: float, X: float, p: dict) -> None:
        """Traffic sign on a post: round, triangle, diamond, square or a wide board; sometimes its back."""
        cv, rng = self.cv, self.rng
        cx, gy, s = self._frame(d, X)
        h, shape, r, back, up, wb = rng.random(6).tolist()
        h, shape, r = 0.55 + 0.25 * h, min(int(shape * 5), 4), (0.1 + 0.05 * r) * s
        wb = (1.6 + wb) * r  # board width
        post_c = _pick(rng, _POLE[:3], 0.06)
        inner_c = _WHITE if rng.random() < 0.6 else _pick(rng, _SIGN, 0.05)
        front_c = _pick(rng, _SIGN, 0.05)
        if h * s < 3:
            return
        if back < 0.2:  # seen from behind: plain grey
            front_c = inner_c = _scale(post_c, 0.9)
        post = self.add(post_c, POLE, _M_METAL)
        cv.rect(cx - 0.015 * s, gy - h * s, cx + 0.015 * s, gy, post)
        cy = gy - h * s - r * 0.8
        front, inner = self.add(front_c, SIGN, _M_PAINT), self.add(inner_c, SIGN, _M_PAINT)
        if shape == 0:  # round
            cv.ellipse(cx, cy, r, r, front)
            if r > 3:
                cv.ellipse(cx, cy, r * 0.7, r * 0.7, inner)
        elif shape == 1:  # triangle, point up or down
            t0, t1 = (0.0, 1.15) if up < 0.6 else (1.15, 0.0)
            cv.trap(cy - r, cy + r, cx - t0 * r, cx + t0 * r, cx - t1 * r, cx + t1 * r, front)
        elif shape == 2:  # diamond
            cv.trap(cy - r, cy, cx, cx, cx - r, cx + r, front)
            cv.trap(cy, cy + r, cx - r, cx + r, cx, cx, front)
        elif shape == 3:  # square plate
            cv.rect(cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r, front)
            if r > 3:
                cv.rect(cx - 0.6 * r, cy - 0.6 * r, cx + 0.6 * r, cy + 0.6 * r, inner)
        else:  # wide direction board on two posts
            cv.rect(cx + wb * 0.7, cy, cx + wb * 0.7 + 0.03 * s, gy, post)
            cv.rect(cx - 0.1 * r, cy - r, cx + wb, cy + 0.4 * r, front)

    def draw_light(self, d: float, X: float, p: dict) -> None:
        """Traffic light(s) on a mast arm over the road (class ``traffic_sign``)."""
        cv, rng = self.cv, self.rng
        cx, gy, s = self._frame(d, X)
        h, reach, lit, two = rng.random(4).tolist()
        h, reach, lit = 1.5 + 0.4 * h, (0.4 + 0.4 * reach) * p["span"], min(int(lit * 3), 2)
        pole_c = _pick(rng, _POLE[:3], 0.06)
        box_c = _pick(rng, [(0.08, 0.08, 0.08), (0.75, 0.62, 0.1), (0.2, 0.25, 0.2)], 0.05)
        if h * s < 4:
            return
        pole = self.add(pole_c, POLE, _M_METAL)
        cv.rect(cx - 0.025 * s, gy - h * s, cx + 0.025 * s, gy, pole)
        toward = 1 if X < 0.5 * (self.XL + self.XR) else -1
        ax = self.cam.x(X + toward * reach, d)
        cv.rect(min(cx, ax), gy - h * s, max(cx, ax), gy - (h - 0.03) * s, pole)
        box = self.add(box_c, SIGN, _M_PAINT)
        lamps = [
            self.add(_scale(c, 1.0 if i == lit else 0.25), SIGN, _M_PAINT)
            for i, c in enumerate(((0.95, 0.1, 0.1), (0.95, 0.7, 0.1), (0.1, 0.9, 0.4)))
        ]
        bw, bh = 0.07 * s, 0.22 * s
        by = gy - h * s + 0.03 * s
        for bx in (ax, cx + toward * 0.06 * s) if two < 0.5 else (ax,):
            cv.rect(bx - bw / 2, by, bx + bw / 2, by + bh, box)
            if bw > 3:
                for i in range(3):
                    cv.ellipse(bx, by + bh * (i + 0.5) / 3, bw * 0.3, bw * 0.3, lamps[i])

    def draw_tree(self, d: float, X: float, p: dict) -> None:
        """Trunk and a frayed canopy of a few blobs, all ``vegetation`` (as CARLA labels trees)."""
        cv, rng = self.cv, self.rng
        cx, gy, s = self._frame(d, X)
        h, R = rng.uniform(0.5, 0.9), rng.uniform(0.3, 0.65) * s
        bark, leaves = _pick(rng, _BARK, 0.1), _pick(rng, _LEAVES, 0.1, _LEAF_CUM)
        blobs = rng.random((int(rng.integers(2, 5)), 5)).tolist()
        if h * s < 3:
            return
        cv.rect(cx - 0.035 * s, gy - h * s * 1.1, cx + 0.035 * s, gy, self.add(bark, VEGETATION, _M_DIRT))
        cy = gy - h * s - R * 0.7
        for ox, oy, rr, ry, sh in blobs:
            rr = (0.55 + 0.3 * rr) * R
            blob = self.add(_scale(leaves, 0.8 + 0.35 * sh), VEGETATION, _M_LEAF)
            cv.ellipse(
                cx + (ox - 0.5) * R,
                cy + (0.7 * oy - 0.4) * R,
                rr,
                rr * (0.8 + 0.3 * ry),
                blob,
                rough=self.fine,
                amp=0.25,
            )

    def draw_clutter(self, d: float, X: float, p: dict) -> None:
        """Bins, boxes, hydrants: ``unlabeled``."""
        rng = self.rng
        cx, gy, s = self._frame(d, X)
        w, h = rng.uniform(0.08, 0.2) * s, rng.uniform(0.12, 0.3) * s
        self.cv.rect(cx - w / 2, gy - h, cx + w / 2, gy, self.add(_pick(rng, _CLUTTER, 0.1), VOID, _M_METAL))

    def draw_hood(self) -> None:
        """Sometimes the ego car's bonnet along the bottom edge, ``unlabeled`` as in Cityscapes."""
        rng, cv = self.rng, self.cv
        if rng.random() >= 0.1:
            return
        depth = rng.uniform(0.05, 0.12) * self.h
        b = cv.box(0, self.h - depth, self.w, self.h)
        if b is not None:
            i0, i1, j0, j1 = b
            u = (cv.xs - self.w / 2) / (0.7 * self.w)
            colour = _mix(_scale(_pick(rng, _CAR_PAINTS, 0.06, _CAR_CUM), 0.8), self.hor, 0.15)
            top = self.h - depth * (1 - u * u)
            cv.fill(b, cv.ys[i0:i1, None] >= top[None, :], self.add(colour, VOID, _M_METAL))

    # ---------------------------------------------------------------- camera effects
    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """Look up colours and classes, then texture, sky, haze, exposure, cast, blur and sensor noise."""
        cv, cam, rng = self.cv, self.cam, self.rng
        cid = cv.cid
        mats = np.array(cv.mats, np.uint8)[cid]
        labels = np.array(cv.classes, np.uint8)[cid]
        # exposure, colour cast, saturation and contrast: one affine colour map, folded into the table
        sat, con = self.sat, self.contrast
        M = (np.diag(self.gain * self.tint) @ (np.full((3, 3), (1 - sat) / 3) + np.eye(3) * sat)).T * con
        offset = 0.45 * self.gain * (1 - con) + rng.uniform(-0.05, 0.05)
        table = (np.array(cv.colours) @ M).astype(np.float32)
        shade = cv.bright * (1 + _FINE[mats] * self.fine + _MID[mats] * self.mid + _LOW[mats] * self.low)
        # aerial perspective: rows near the horizon fade toward the horizon colour
        dist = np.abs(cv.ys - cam.yh) * (1 / (cam.f * rng.uniform(0.08, 0.2)))
        a = (self.haze * np.exp(-dist)).astype(np.float32)
        shade *= (1 - a)[:, None]
        if rng.random() < 0.3:  # vignette
            vy = 1 - rng.uniform(0.1, 0.35) * ((cv.ys / self.h - 0.5) * 2) ** 2
            vx = 1 - rng.uniform(0.1, 0.35) * ((cv.xs / self.w - 0.5) * 2) ** 2
            shade *= vy[:, None] * vx[None, :]
        img = table[cid]
        img *= shade[:, :, None]
        img += (a[:, None] * (self.hor @ M).astype(np.float32)[None, :] + np.float32(offset))[:, None, :]
        self.sky(img, M, offset)
        r = rng.uniform(0, 1.0) ** 2 * 1.6 * self.scale
        if r >= 0.6:
            img = _blur(img, int(round(r)))
        elif r > 0.25:
            img = 0.5 * (img + _blur(img, 1))
        sigma = np.float32(rng.uniform(0.005, 0.035) * 3.46 * 255)  # uniform noise with std 0.5..3.5 %
        img *= np.float32(255)
        img += self.noise_rng.random(img.shape, dtype=np.float32) * sigma + np.float32(0.5 - sigma / 2)
        return np.clip(img, 0, 255).astype(np.uint8), labels

    def sky(self, img: np.ndarray, M: np.ndarray, offset: float) -> None:
        """Fill sky pixels (table id 0) with a gradient, clouds and the same colour map as the rest."""
        cv, cam, rng = self.cv, self.cam, self.rng
        clouds = self.tod in ("day", "overcast", "dusk") and rng.random() < 0.75
        cloud = rng.uniform(0.75, 0.98) * (self.hor if self.tod == "dusk" else np.ones(3))
        amount = rng.uniform(0.2, 0.8)
        rows = min(self.h, max(0, math.ceil(cam.yh + 1)))
        if rows == 0:
            return
        u = np.clip((cam.yh - cv.ys[:rows]) / (0.9 * cam.f), 0, 1) ** 0.6
        sky = (self.hor[None, :] * (1 - u[:, None]) + self.zen[None, :] * u[:, None])[:, None, :]
        sky = np.broadcast_to(sky, (rows, self.w, 3))
        if clouds:
            a = np.clip((self.low[:rows] + 0.3 * self.mid[:rows]) * 0.5 + (amount - 0.7), 0, 0.9)[:, :, None]
            sky = sky * (1 - a) + (cloud * a).astype(np.float32)
        sky = sky @ M.astype(np.float32) + np.float32(offset)
        m = cv.cid[:rows] == 0
        np.copyto(img[:rows], sky, where=m[:, :, None])


def make_scene(seed: int, index: int, height: int = 96, width: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Scene ``index`` of data set ``seed``: an (H, W, 3) uint8 image and (H, W) uint8 class ids.

    A pure function of its arguments. The layout (street, objects, weather) depends on (seed, index)
    only; the pixel noise also on the size.
    """
    if height < 1 or width < 1:
        raise ValueError(f"scene size must be at least 1x1, got {height}x{width}")
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    height, width = int(height), int(width)
    scene = _Scene(
        np.random.default_rng([seed, index, 0]), np.random.default_rng([seed, index, 1, height, width]), height, width
    )
    scene.draw()
    return scene.finish()


def make_dataset(
    count: int, height: int = 96, width: int = 128, seed: int = 0, start: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Scenes start..start+count-1 stacked: (N, H, W, 3) uint8 images and (N, H, W) uint8 masks."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    images = np.empty((count, height, width, 3), np.uint8)
    masks = np.empty((count, height, width), np.uint8)
    for n in range(count):
        images[n], masks[n] = make_scene(seed, start + n, height, width)
    return images, masks


def write_dataset(out: str | Path, count: int, height: int = 96, width: int = 128, seed: int = 0) -> Path:
    """Write scenes 0..count-1 as ``out/image/scene_00000.png`` and ``out/mask/scene_00000.png``, plus
    ``out/classes.json`` ({class name: [r, g, b]} in class order: the toolkit's palette file).

    Masks are palette PNGs: the pixel values are class ids, and image viewers show the class colours.
    """
    out = Path(out)
    (out / "image").mkdir(parents=True, exist_ok=True)
    (out / "mask").mkdir(parents=True, exist_ok=True)
    flat = [v for rgb in PALETTE for v in rgb]
    for n in range(count):
        image, mask = make_scene(seed, n, height, width)
        name = f"scene_{n:05d}.png"
        Image.fromarray(image).save(out / "image" / name)
        m = Image.fromarray(mask)
        m.putpalette(flat)
        m.save(out / "mask" / name)
    classes = {name: list(rgb) for name, rgb in zip(CLASS_NAMES, PALETTE, strict=True)}
    (out / "classes.json").write_text(json.dumps(classes, indent=1) + "\n")
    return out
