"""Plane geometry and binary-mask tools for straightening photographed documents (pure numpy).

Why hand-written: a clinic downloads the install over EDGE, and the few operations the
document scanner needs (connected components, hole filling, a convex hull, a homography and
a rectangle's true aspect ratio) are a few hundred lines of numpy, against ~35 MB for SciPy
or ~50 MB for OpenCV. Everything here works on small detection images (a few hundred pixels
a side), so plain Python loops over runs or hull vertices are fast enough.

Conventions: points are ``(x, y)`` in pixels with y pointing down; a quadrilateral is a
``(4, 2)`` float array ordered top-left, top-right, bottom-right, bottom-left; masks are 2-D
``bool`` arrays indexed ``[y, x]``.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "binary_dilate",
    "binary_erode",
    "convex_hull",
    "fill_holes",
    "grey_close",
    "homography",
    "is_convex",
    "label_components",
    "largest_component",
    "mask_to_quad",
    "order_quad",
    "otsu_threshold",
    "perspective_coeffs",
    "polygon_area",
    "rectangle_aspect",
]


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of 0-255 values: the level that best splits them into two classes.

    Values above the returned level form the bright class. Returns the mean for a flat input.
    Values are binned to integers, which is exact for 8-bit images and plenty for a split.
    """
    v = np.asarray(values).ravel()
    if v.size == 0:
        return 0.0
    idx = np.clip(v, 0, 255).astype(np.uint8) if v.dtype != np.uint8 else v
    hist = np.bincount(idx, minlength=256).astype(np.float64)
    centres = np.arange(256, dtype=np.float64) + 0.5
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = np.divide(m0, w0, out=np.zeros_like(m0), where=w0 > 0)
    mean1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0), where=w1 > 0)
    between = w0 * w1 * (mean0 - mean1) ** 2
    if not np.any(between > 0):
        return float(np.mean(v))
    return float(np.argmax(between)) + 0.5


def grey_close(image: np.ndarray, size: int) -> np.ndarray:
    """Grey-level closing (max filter, then min filter) with a size x size square, separably.

    Removes every dark feature narrower than ``size`` (print on paper) and keeps the slow
    variations (the light falling on it). Edges are handled by repeating the border.
    """
    a = np.asarray(image)
    r = max(0, size // 2)
    if r == 0:
        return a.copy()

    def run(x: np.ndarray, op: np.ufunc) -> np.ndarray:
        for axis in (0, 1):
            p = np.pad(x, [(r, r) if ax == axis else (0, 0) for ax in (0, 1)], mode="edge")
            n = x.shape[axis]
            out = p.take(range(0, n), axis=axis)
            for k in range(1, 2 * r + 1):
                out = op(out, p.take(range(k, k + n), axis=axis))
            x = out
        return x

    return run(run(a, np.maximum), np.minimum)


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Horizontal runs of True: (row, start, end) with end exclusive, sorted by row then start."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    d = np.diff(padded, axis=1)
    rs, starts = np.nonzero(d == 1)
    _, ends = np.nonzero(d == -1)
    return rs, starts, ends


def label_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label 4-connected regions of True; returns (labels, sizes) with labels 1..n, 0 = background.

    Run-length union-find: the Python loop runs once per pair of touching runs in adjacent rows,
    which on a detection-sized mask is thousands, not the millions of a per-pixel loop.
    """
    mask = np.asarray(mask, dtype=bool)
    rows, starts, ends = _runs(mask)
    n = rows.size
    labels = np.zeros(mask.shape, dtype=np.int32)
    if n == 0:
        return labels, np.zeros(1, dtype=np.int64)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    row_first = np.searchsorted(rows, np.arange(mask.shape[0] + 1))
    for r in range(mask.shape[0] - 1):
        a0, a1 = row_first[r], row_first[r + 1]
        b0, b1 = row_first[r + 1], row_first[r + 2]
        if a0 == a1 or b0 == b1:
            continue
        bs, be = starts[b0:b1], ends[b0:b1]
        # runs below that overlap run i: start_b < end_a and end_b > start_a (4-connectivity)
        lo = np.searchsorted(be, starts[a0:a1], side="right")
        hi = np.searchsorted(bs, ends[a0:a1], side="left")
        for k in np.nonzero(hi > lo)[0]:
            ra = find(a0 + int(k))
            for j in range(b0 + int(lo[k]), b0 + int(hi[k])):
                rb = find(j)
                if ra != rb:
                    parent[rb] = ra
    roots = np.fromiter((find(i) for i in range(n)), dtype=np.int64, count=n)
    _, compact = np.unique(roots, return_inverse=True)
    compact = compact.astype(np.int32) + 1
    lengths = ends - starts
    sizes = np.bincount(compact, weights=lengths).astype(np.int64)
    for i in range(n):
        labels[rows[i], starts[i] : ends[i]] = compact[i]
    return labels, sizes


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of True (all False if there is none)."""
    labels, sizes = label_components(mask)
    if sizes.size <= 1:
        return np.zeros(np.shape(mask), dtype=bool)
    return labels == int(np.argmax(sizes[1:])) + 1


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Set to True every False region that does not touch the border (text inside a page)."""
    mask = np.asarray(mask, dtype=bool)
    labels, _ = label_components(~mask)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    outside = np.isin(labels, edge[edge > 0])
    return ~outside


def _shift_reduce(mask: np.ndarray, radius: int, op: np.ufunc, fill: bool) -> np.ndarray:
    """Square (2r+1) structuring element by separable shifts: max (dilate) or min (erode)."""
    out = np.asarray(mask, dtype=bool)
    for _ in range(max(0, radius)):
        for axis in (0, 1):
            p = np.pad(out, [(1, 1) if a == axis else (0, 0) for a in (0, 1)], constant_values=fill)
            a = p[:-2] if axis == 0 else p[:, :-2]
            b = p[2:] if axis == 0 else p[:, 2:]
            out = op(op(a, b), out)
    return out


def binary_erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Erode by a (2r+1)-square; cuts thin bridges between a page and bright clutter."""
    return _shift_reduce(mask, radius, np.logical_and, True)


def binary_dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilate by a (2r+1)-square; gives back what :func:`binary_erode` took from the edges."""
    return _shift_reduce(mask, radius, np.logical_or, False)


def polygon_area(points: np.ndarray) -> float:
    """Shoelace area (always positive)."""
    p = np.asarray(points, dtype=np.float64)
    x, y = p[:, 0], p[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Andrew's monotone chain; returns the hull's vertices in order, without repeats."""
    pts = np.unique(np.asarray(points, dtype=np.float64), axis=0)
    if len(pts) < 3:
        return pts

    def cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
        return float((a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]))

    lower: list[np.ndarray] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[np.ndarray] = []
    for p in pts[::-1]:
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1])


def _max_area_quad(hull: np.ndarray) -> np.ndarray:
    """Four hull vertices spanning (locally) the largest area: the corners of a noisy blob.

    Dropping the vertex that costs least area, one at a time, goes wrong on a hull with a
    run of nearly collinear vertices near a corner (a slightly chamfered or blurred corner):
    it can keep a vertex several pixels along the side instead of the corner. So the greedy
    result is then improved by moving each corner to whichever vertex between its
    neighbours gives the larger quad, until no move helps.
    """
    n = len(hull)
    idx = list(range(n))
    while len(idx) > 4:
        m = len(idx)
        losses = []
        for i in range(m):
            a, b, c = hull[idx[i - 1]], hull[idx[i]], hull[idx[(i + 1) % m]]
            losses.append(abs((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])))
        del idx[int(np.argmin(losses))]
    best_area = polygon_area(hull[idx])
    improved = True
    while improved:
        improved = False
        for k in range(4):
            j = (idx[k - 1] + 1) % n
            while j != idx[(k + 1) % 4]:
                trial = idx.copy()
                trial[k] = j
                area = polygon_area(hull[trial])
                if area > best_area + 1e-9:
                    idx, best_area, improved = trial, area, True
                j = (j + 1) % n
    return hull[idx]


def order_quad(quad: np.ndarray) -> np.ndarray:
    """Order four corners clockwise on screen, starting at the top-left (smallest x + y)."""
    q = np.asarray(quad, dtype=np.float64).reshape(4, 2)
    c = q.mean(axis=0)
    ang = np.arctan2(q[:, 1] - c[1], q[:, 0] - c[0])  # y down: increasing angle = clockwise
    q = q[np.argsort(ang)]
    start = int(np.argmin(q.sum(axis=1)))
    return np.roll(q, -start, axis=0)


def is_convex(quad: np.ndarray) -> bool:
    """True when the ordered quad turns the same way at every corner (no bow-tie, no dent)."""
    q = np.asarray(quad, dtype=np.float64)
    d = np.roll(q, -1, axis=0) - q
    z = d[:, 0] * np.roll(d, -1, axis=0)[:, 1] - d[:, 1] * np.roll(d, -1, axis=0)[:, 0]
    return bool(np.all(z > 0) or np.all(z < 0))


def _boundary(mask: np.ndarray) -> np.ndarray:
    """(x, y) of mask pixels with a 4-neighbour outside the mask."""
    inner = binary_erode(mask, 1) if mask.any() else mask
    ys, xs = np.nonzero(mask & ~inner)
    return np.column_stack([xs, ys]).astype(np.float64)


def _fit_line(points: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Total least squares line n . p = c with |n| = 1, or None with too few points."""
    if len(points) < 5:
        return None
    c = points.mean(axis=0)
    _, _, vt = np.linalg.svd(points - c, full_matrices=False)
    n = vt[-1]
    return n, float(n @ c)


def _intersect(l1: tuple[np.ndarray, float], l2: tuple[np.ndarray, float]) -> np.ndarray | None:
    a = np.array([l1[0], l2[0]])
    if abs(np.linalg.det(a)) < 1e-6:
        return None
    return np.linalg.solve(a, np.array([l1[1], l2[1]]))


def mask_to_quad(mask: np.ndarray, band: float = 3.0, trim: float = 0.1) -> np.ndarray | None:
    """The quadrilateral that best describes a blob: hull reduced to 4 corners, sides refit.

    The hull-reduced corners are exact only to a pixel or two and cut rounded or dog-eared
    corners; refitting each side to the boundary pixels near it (leaving out ``trim`` of each
    side's length at both ends, where corners bend) and intersecting the lines gives sub-pixel
    corners that a full-resolution warp can use after scaling up. Returns None when the blob
    has no four-sided shape. Coordinates are pixel centres.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.sum() < 16:
        return None
    ys, xs = np.nonzero(mask)
    # hull vertices are among the left- and right-most pixels of each row (pixel corners)
    order = np.lexsort((xs, ys))
    ys, xs = ys[order], xs[order]
    first = np.r_[True, ys[1:] != ys[:-1]]
    last = np.r_[ys[1:] != ys[:-1], True]
    cand = np.concatenate(
        [
            np.column_stack([xs[first] - 0.5, ys[first] - 0.5]),
            np.column_stack([xs[first] - 0.5, ys[first] + 0.5]),
            np.column_stack([xs[last] + 0.5, ys[last] - 0.5]),
            np.column_stack([xs[last] + 0.5, ys[last] + 0.5]),
        ]
    )
    hull = convex_hull(cand)
    if len(hull) < 4:
        return None
    quad = order_quad(_max_area_quad(hull))
    edge = _boundary(mask)
    lines = []
    for i in range(4):
        a, b = quad[i], quad[(i + 1) % 4]
        d = b - a
        length = float(np.hypot(*d))
        if length < 1e-6:
            return None
        u = d / length
        n = np.array([-u[1], u[0]])
        rel = edge - a
        along = rel @ u
        across = rel @ n
        sel = (np.abs(across) <= band) & (along > trim * length) & (along < (1 - trim) * length)
        line = _fit_line(edge[sel])
        if line is None:
            lines.append((n, float(n @ a)))
            continue
        ln, lc = line
        if ln @ n < 0:
            ln, lc = -ln, -lc
        # boundary pixel centres sit half a pixel inside the edge; n points inwards
        lines.append((ln, lc - 0.5))
    refined = []
    for i in range(4):
        p = _intersect(lines[i - 1], lines[i])
        if p is None:
            return quad
        refined.append(p)
    out = order_quad(np.array(refined))
    # a refit that moved a corner far (a curled page) is worse than the hull's corner
    if not is_convex(out) or np.max(np.hypot(*(out - quad).T)) > 0.1 * np.sqrt(mask.sum()):
        return quad
    return out


def homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 projective map taking four src points onto four dst points (h33 = 1)."""
    s = np.asarray(src, dtype=np.float64)
    d = np.asarray(dst, dtype=np.float64)
    a = np.zeros((8, 8))
    b = np.zeros(8)
    for i in range(4):
        x, y = s[i]
        u, v = d[i]
        a[2 * i] = [x, y, 1, 0, 0, 0, -u * x, -u * y]
        a[2 * i + 1] = [0, 0, 0, x, y, 1, -v * x, -v * y]
        b[2 * i], b[2 * i + 1] = u, v
    h = np.linalg.solve(a, b)
    return np.append(h, 1.0).reshape(3, 3)


def perspective_coeffs(quad: np.ndarray, width: int, height: int) -> tuple[float, ...]:
    """Pillow's PERSPECTIVE data: maps each output pixel of a width x height rectangle into quad.

    Pillow samples the input at ((a x + b y + c) / (g x + h y + 1), ...) for output (x, y), so
    the homography goes from the output rectangle to the input quad. Pillow addresses pixel
    corners while the quad holds pixel centres, hence the half-pixel shifts on both sides.
    """
    rect = np.array([[0.0, 0.0], [width - 1.0, 0.0], [width - 1.0, height - 1.0], [0.0, height - 1.0]])
    shift = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]], dtype=np.float64)
    h = homography(rect, np.asarray(quad, dtype=np.float64) + 0.5) @ shift
    h = h / h[2, 2]
    return tuple(float(v) for v in h.ravel()[:8])


def rectangle_aspect(quad: np.ndarray, size: tuple[int, int]) -> float:
    """Height / width of the real rectangle seen as ``quad`` in a photo of ``size`` (w, h).

    Zhang & He, "Whiteboard scanning and image enhancement" (2007): with the principal point at
    the image centre and square pixels, the quad fixes the focal length, and with it the true
    aspect ratio, which the ratio of side lengths gets wrong under strong perspective. When
    the view is nearly frontal the focal length is undetermined (or comes out absurd) and the
    mean side lengths are the better answer.
    """
    q = np.asarray(quad, dtype=np.float64) - np.array([size[0] / 2, size[1] / 2])
    tl, tr, br, bl = (np.append(p, 1.0) for p in q)
    m1, m2, m3, m4 = tl, tr, bl, br
    naive_w = (np.hypot(*(q[1] - q[0])) + np.hypot(*(q[2] - q[3]))) / 2
    naive_h = (np.hypot(*(q[3] - q[0])) + np.hypot(*(q[2] - q[1]))) / 2
    naive = float(naive_h / max(naive_w, 1e-9))
    den2 = np.dot(np.cross(m2, m4), m3)
    den3 = np.dot(np.cross(m3, m4), m2)
    if abs(den2) < 1e-9 or abs(den3) < 1e-9:
        return naive
    k2 = np.dot(np.cross(m1, m4), m3) / den2
    k3 = np.dot(np.cross(m1, m4), m2) / den3
    n2 = k2 * m2 - m1
    n3 = k3 * m3 - m1
    diag = float(np.hypot(*size))
    if abs(n2[2] * n3[2]) < 1e-12:
        return naive
    f2 = -(n2[0] * n3[0] + n2[1] * n3[1]) / (n2[2] * n3[2])
    if not (0.2 * diag) ** 2 < f2 < (8.0 * diag) ** 2:
        return naive
    w2 = (n2[0] ** 2 + n2[1] ** 2) / f2 + n2[2] ** 2
    h2 = (n3[0] ** 2 + n3[1] ** 2) / f2 + n3[2] ** 2
    if w2 <= 0 or h2 <= 0:
        return naive
    return float(np.sqrt(h2 / w2))
