"""The Mandelbrot set by escape time, rendered to a PNG.

For the pixel ``(i, j)`` (column ``i`` of ``width``, row ``j`` of ``height``, row 0 at
the top) the point is the pixel centre::

    c = x + i y,   x = xMin + (i + 1/2) (xMax - xMin) / width
                   y = yMax - (j + 1/2) (yMax - yMin) / height

(computed about the window's centre, which is the same in exact arithmetic and makes a
window symmetric about the real axis give exactly mirrored rows). With ``z_0 = 0`` and
``z_{n+1} = z_n**2 + c`` the escape count is the smallest ``n`` in
``0 .. maxIterations - 1`` with ``|z_{n+1}| > 2``, or ``maxIterations`` when there is
none ("inside"). Points of the main cardioid and of the period-2 disc are inside by a
closed-form test and skip the iteration; the count is the same.

Counts are stored as ``uint32`` (``height``, ``width``) arrays. Rows are independent, so
the image is the same for any number of threads or bands. The colour map sends inside
to black and an escape count ``n`` to a smooth cosine gradient of 255 colours indexed by
``log(1 + n) / log(1 + maxIterations)``; the PNG is 8-bit palette ("P") mode, so it
holds one byte per pixel before compression.

Entry points: :data:`KIND` (validate/start/warm_up for the runner),
:func:`escape_counts` (parallel or serial numba), :func:`render_png`, and for benchmarks
:func:`escape_counts_numpy` and :func:`escape_counts_python`.
"""

from __future__ import annotations

import base64
import io
import math
import zlib

import numpy as np
from numba import njit, prange
from PIL import Image

from crunchql.compute import config
from crunchql.compute.base import JSONDict
from crunchql.compute.params.mandelbrot import MandelbrotParams
from crunchql.compute.sharding import block_range, check_cover, shard_count

DEFAULT_WINDOW = config.DEFAULT_WINDOW
"""(xMin, xMax, yMin, yMax) when the input leaves them out (defined in :mod:`compute.config`)."""


# ---- kernels -------------------------------------------------------------------------------


@njit(inline="always")
def _escape_count(cx, cy, max_iter):  # type: ignore[no-untyped-def]
    """Escape count of ``c = cx + i cy`` (see the module docstring)."""
    # main cardioid and period-2 disc: inside, no need to iterate
    xq = cx - 0.25
    q = xq * xq + cy * cy
    if q * (q + xq) <= 0.25 * cy * cy or (cx + 1.0) * (cx + 1.0) + cy * cy <= 0.0625:
        return max_iter
    x = 0.0
    y = 0.0
    for n in range(max_iter):
        x, y = x * x - y * y + cx, 2.0 * x * y + cy
        if x * x + y * y > 4.0:
            return n
    return max_iter


@njit(cache=True, nogil=True, parallel=True)
def _escape_rows_parallel(out, row_lo, row_hi, max_iter, x_c, y_c, dx, dy):  # type: ignore[no-untyped-def]
    """Escape counts of rows ``row_lo .. row_hi - 1`` into ``out``, one row per task.

    Parameters
    ----------
    out : np.ndarray
        Shape ``(height, width)``, uint32; row 0 is the top (largest y).
    row_lo, row_hi : int
    max_iter : int
        The count of a pixel that never escapes.
    x_c, y_c : float
        Centre of the window.
    dx, dy : float
        Pixel width and height; pixel ``(j, i)`` is sampled at its centre
        ``(x_c + (i + 0.5 - width / 2) dx, y_c + (height / 2 - j - 0.5) dy)``.
    """
    height, width = out.shape
    for j in prange(row_lo, row_hi):
        cy = y_c + (0.5 * height - j - 0.5) * dy
        for i in range(width):
            out[j, i] = _escape_count(x_c + (i + 0.5 - 0.5 * width) * dx, cy, max_iter)


@njit(cache=True, nogil=True)
def _escape_rows_serial(out, row_lo, row_hi, max_iter, x_c, y_c, dx, dy):  # type: ignore[no-untyped-def]
    """:func:`_escape_rows_parallel` on one thread."""
    height, width = out.shape
    for j in range(row_lo, row_hi):
        cy = y_c + (0.5 * height - j - 0.5) * dy
        for i in range(width):
            out[j, i] = _escape_count(x_c + (i + 0.5 - 0.5 * width) * dx, cy, max_iter)


# ---- wrappers --------------------------------------------------------------------------------


def _geometry(
    width: int, height: int, window: tuple[float, float, float, float]
) -> tuple[float, float, float, float]:
    """(x_c, y_c, dx, dy): the window's centre and the pixel size."""
    x_min, x_max, y_min, y_max = window
    return (
        0.5 * (x_min + x_max),
        0.5 * (y_min + y_max),
        (x_max - x_min) / width,
        (y_max - y_min) / height,
    )


def pixel_centres(
    width: int, height: int, window: tuple[float, float, float, float] = DEFAULT_WINDOW
) -> tuple[np.ndarray, np.ndarray]:
    """The real parts of the columns and the imaginary parts of the rows.

    Returns
    -------
    (cx, cy) : tuple of np.ndarray
        float64, shapes ``(width,)`` and ``(height,)``:
        ``cx[i] = x_c + (i + 1/2 - width/2) dx``, ``cy[j] = y_c + (height/2 - j - 1/2) dy``
        with the window centre ``(x_c, y_c)`` and pixel size ``(dx, dy)``, bitwise as the
        kernels compute them.
    """
    x_c, y_c, dx, dy = _geometry(width, height, window)
    cx = x_c + (np.arange(width) + 0.5 - 0.5 * width) * dx
    cy = y_c + (0.5 * height - np.arange(height) - 0.5) * dy
    return cx, cy


def escape_counts(
    width: int,
    height: int,
    max_iter: int,
    window: tuple[float, float, float, float] = DEFAULT_WINDOW,
    parallel: bool = True,
) -> np.ndarray:
    """Escape counts of every pixel, rows spread over numba's threads.

    Parameters
    ----------
    width, height : int
        Image size in pixels, >= 1.
    max_iter : int
        Iteration cap, >= 1.
    window : tuple of float
        ``(xMin, xMax, yMin, yMax)`` of the complex plane.
    parallel : bool
        Rows over all threads (default) or on the calling thread.

    Returns
    -------
    np.ndarray
        uint32, shape ``(height, width)``, row 0 at the top: the smallest ``n < max_iter``
        with ``|z_{n+1}| > 2`` (``z_0 = 0``, ``z_{n+1} = z_n**2 + c``), else ``max_iter``.
    """
    out = np.empty((height, width), dtype=np.uint32)
    kernel = _escape_rows_parallel if parallel else _escape_rows_serial
    kernel(out, 0, height, max_iter, *_geometry(width, height, window))
    return out


def escape_counts_numpy(
    width: int,
    height: int,
    max_iter: int,
    window: tuple[float, float, float, float] = DEFAULT_WINDOW,
) -> np.ndarray:
    """:func:`escape_counts` vectorised with NumPy: all pixels step together.

    Each iteration updates only the pixels still bounded (compressed index set), so the
    cost is the same pixels x iterations as the kernel plus NumPy's per-call overhead.
    Same floating-point operations in the same order, so the same counts.

    Returns
    -------
    np.ndarray
        uint32, shape ``(height, width)``.
    """
    cx_row, cy_col = pixel_centres(width, height, window)
    cx = np.broadcast_to(cx_row, (height, width)).ravel()
    cy = np.broadcast_to(cy_col[:, None], (height, width)).ravel()
    counts = np.full(cx.size, max_iter, dtype=np.uint32)
    xq = cx - 0.25
    q = xq * xq + cy * cy
    inside = (q * (q + xq) <= 0.25 * cy * cy) | ((cx + 1.0) * (cx + 1.0) + cy * cy <= 0.0625)
    idx = np.flatnonzero(~inside)
    ca, cb = cx[idx], cy[idx]
    x = np.zeros(idx.size)
    y = np.zeros(idx.size)
    for n in range(max_iter):
        if idx.size == 0:
            break
        x, y = x * x - y * y + ca, 2.0 * x * y + cb
        escaped = x * x + y * y > 4.0
        counts[idx[escaped]] = n
        keep = ~escaped
        idx, ca, cb, x, y = idx[keep], ca[keep], cb[keep], x[keep], y[keep]
    return counts.reshape(height, width)


def escape_counts_python(
    width: int,
    height: int,
    max_iter: int,
    window: tuple[float, float, float, float] = DEFAULT_WINDOW,
) -> list[list[int]]:
    """:func:`escape_counts` in pure Python (~50 ns per iteration: keep images small).

    Returns
    -------
    list of list of int
        ``height`` rows of ``width`` counts, the same values as the kernel.
    """
    x_c, y_c, dx, dy = _geometry(width, height, window)
    rows = []
    for j in range(height):
        cy = y_c + (0.5 * height - j - 0.5) * dy
        row = []
        for i in range(width):
            cx = x_c + (i + 0.5 - 0.5 * width) * dx
            xq = cx - 0.25
            q = xq * xq + cy * cy
            count = max_iter
            if not (q * (q + xq) <= 0.25 * cy * cy or (cx + 1.0) * (cx + 1.0) + cy * cy <= 0.0625):
                x = y = 0.0
                for n in range(max_iter):
                    x, y = x * x - y * y + cx, 2.0 * x * y + cy
                    if x * x + y * y > 4.0:
                        count = n
                        break
            row.append(count)
        rows.append(row)
    return rows


def _make_palette() -> bytes:
    """256 RGB entries: 0 is black (inside), 1..255 a cosine gradient (Quilez's palette)."""
    t = np.linspace(0.0, 1.0, 255)[:, None]
    rgb = 0.5 + 0.5 * np.cos(2.0 * np.pi * (t + np.array([0.0, 0.10, 0.20])))
    colours = np.vstack([np.zeros((1, 3)), rgb])
    return bytes(np.round(255.0 * colours).astype(np.uint8).ravel())


PALETTE = _make_palette()
"""The PNG palette: 256 RGB triples, 768 bytes."""


def colour_indices(counts: np.ndarray, max_iter: int) -> np.ndarray:
    """Palette indices for escape counts.

    Parameters
    ----------
    counts : np.ndarray
        uint32, any shape, values 0 .. ``max_iter``.
    max_iter : int

    Returns
    -------
    np.ndarray
        uint8, same shape, through a lookup table of ``max_iter + 1`` entries: 0 where
        ``counts == max_iter`` (black), else ``1 + floor(254 log(1 + n) / log(1 + max_iter))``
        in 1 .. 254.
    """
    scale = 254.0 / math.log1p(max_iter)
    lut = (1.0 + np.floor(np.log1p(np.arange(max_iter + 1.0)) * scale)).astype(np.uint8)
    lut[max_iter] = 0
    indices: np.ndarray = lut[counts]
    return indices


def render_png(counts: np.ndarray, max_iter: int) -> bytes:
    """Encode escape counts as a palette PNG (inside black).

    Parameters
    ----------
    counts : np.ndarray
        uint32, shape ``(height, width)``, from :func:`escape_counts`.
    max_iter : int

    Returns
    -------
    bytes
        A ``width`` x ``height`` 8-bit palette PNG.
    """
    return png_from_indices(colour_indices(counts, max_iter))


def png_from_indices(indices: np.ndarray) -> bytes:
    """Encode palette indices (uint8, shape ``(height, width)``) as a palette PNG."""
    image = Image.fromarray(indices)
    image.putpalette(PALETTE)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=False, compress_level=config.PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def mandelbrot_result(counts: np.ndarray, max_iter: int) -> JSONDict:
    """The ``MandelbrotResult`` for finished counts.

    Returns
    -------
    dict
        ``width``, ``height`` (int), ``insideFraction`` = (pixels with count ``max_iter``)
        / (all pixels), ``png`` = base64 (ASCII) of :func:`render_png`.
    """
    height, width = counts.shape
    return {
        "width": width,
        "height": height,
        "insideFraction": float(np.count_nonzero(counts == max_iter) / counts.size),
        "png": base64.b64encode(render_png(counts, max_iter)).decode("ascii"),
    }


# ---- the kind ----------------------------------------------------------------------------------


class MandelbrotJob:
    """Escape counts band by band, then one last step that encodes the PNG.

    ``first_row``/``stop_row`` restrict it to a shard's band of rows (see
    :func:`start_shard`); ``counts`` then holds only those rows.
    """

    def __init__(self, params: JSONDict, first_row: int = 0, stop_row: int | None = None) -> None:
        self.width = int(params["width"])
        self.height = int(params["height"])
        self.max_iter = int(params["maxIterations"])
        window = (params["xMin"], params["xMax"], params["yMin"], params["yMax"])
        self.geometry = _geometry(self.width, self.height, window)
        self.first_row = first_row
        self.stop_row = self.height if stop_row is None else stop_row
        # Whole-image shape even for a shard (the kernel derives each row's centre from
        # the image height); a shard writes, and so commits memory for, its rows only.
        self.counts = np.empty((self.height, self.width), dtype=np.uint32)
        self.band = max(2, config.MANDEL_CHUNK_ITERATIONS // (self.width * self.max_iter))
        self.next_row = first_row
        self._result: JSONDict | None = None

    @property
    def done(self) -> bool:
        return self._result is not None

    @property
    def progress(self) -> float:
        # the encoding step counts as one more band
        if self.done:
            return 1.0
        rows = self.stop_row - self.first_row
        return (self.next_row - self.first_row) / (rows + min(self.band, rows))

    def step(self) -> None:
        if self.done:
            return
        if self.next_row < self.stop_row:
            row_hi = min(self.stop_row, self.next_row + self.band)
            self._rows(self.next_row, row_hi)
            self.next_row = row_hi
        else:
            self._result = self._finish()

    def _rows(self, row_lo: int, row_hi: int) -> None:
        _escape_rows_parallel(self.counts, row_lo, row_hi, self.max_iter, *self.geometry)

    def _finish(self) -> JSONDict:
        return mandelbrot_result(self.counts, self.max_iter)

    def partial_result(self) -> JSONDict | None:
        return None

    def result(self) -> JSONDict:
        if self._result is None:
            raise RuntimeError("the job is not done")
        return self._result


def start(params: MandelbrotParams) -> MandelbrotJob:
    """A :class:`MandelbrotJob` for validated ``params``."""
    return MandelbrotJob(params.to_json())


# ---- shards: bands of rows; each band's palette indices kept, the PNG encoded once -----------

_ESTIMATE_SIDE = 24
# plan_shards renders a coarse image: runners call it in the kernel thread.
PLAN_SHARDS_COMPUTES = True


def plan_shards(params: MandelbrotParams, shard_seconds: float) -> int:
    """Shards for ``params`` at ``shard_seconds`` of one core each (1: not split).

    The cost is the iterations actually run, which the bound (pixels x maxIterations)
    overstates by orders of magnitude for most windows; it is estimated from a coarse
    ``24 x 24`` render of the same window (at most ~0.25 s, on the calling thread).
    """
    window = (params.x_min, params.x_max, params.y_min, params.y_max)
    side = _ESTIMATE_SIDE
    sample = escape_counts(side, side, params.max_iterations, window, parallel=False)
    iterations = float(sample.mean() + 1.0) * params.width * params.height
    cost = iterations / config.MANDEL_ITERATIONS_PER_CORE_SECOND
    return shard_count(cost, shard_seconds, params.height)


class MandelbrotShardJob(MandelbrotJob):
    """The rows of one shard; ``result()`` is the partial ``{"firstBlock", "stopBlock"
    (rows), "inside" (pixels that never escape), "indices" (the rows' palette indices,
    zlib-compressed, base64)}``."""

    def _finish(self) -> JSONDict:
        rows = self.counts[self.first_row : self.stop_row]
        indices = np.ascontiguousarray(colour_indices(rows, self.max_iter))
        return {
            "firstBlock": self.first_row,
            "stopBlock": self.stop_row,
            "inside": int(np.count_nonzero(rows == self.max_iter)),
            "indices": base64.b64encode(zlib.compress(indices.tobytes(), 1)).decode("ascii"),
        }


def start_shard(params: MandelbrotParams, shard: int, shards: int) -> MandelbrotShardJob:
    """The job of shard ``shard`` (0-based) of ``shards``: rows ``block_range(height, …)``."""
    first, stop = block_range(params.height, shard, shards)
    return MandelbrotShardJob(params.to_json(), first, stop)


def combine(params: MandelbrotParams, partials: list[JSONDict]) -> JSONDict:
    """The result from every shard's partial, in shard order: the same palette indices as
    the unsplit job, encoded once by the same encoder, and the same inside share."""
    width, height = params.width, params.height
    check_cover(partials, height)
    bands = []
    for partial in partials:
        raw = zlib.decompress(base64.b64decode(str(partial["indices"]), validate=True))
        rows = int(partial["stopBlock"]) - int(partial["firstBlock"])
        if len(raw) != rows * width:
            raise ValueError("a shard partial's indices do not match its rows")
        bands.append(np.frombuffer(raw, dtype=np.uint8).reshape(rows, width))
    inside = sum(int(partial["inside"]) for partial in partials)
    indices = np.concatenate(bands)
    return {
        "width": width,
        "height": height,
        "insideFraction": float(inside / (width * height)),
        "png": base64.b64encode(png_from_indices(indices)).decode("ascii"),
    }


def warm_up() -> None:
    """Compile or load from cache both row kernels."""
    escape_counts(4, 4, 8, parallel=True)
    escape_counts(4, 4, 8, parallel=False)
