"""mandelbrot: counts against the naive reference, symmetry, area, PNG, jobs, validation."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crunchql.compute import config
from crunchql.compute import mandelbrot as mb
from crunchql.compute.base import ParameterError
from crunchql.compute.catalog import MANDELBROT
from tests.compute.naive_kernels import naive_escape_counts

ROOT = Path(__file__).resolve().parents[2]
AREA = 1.50659177  # area of the Mandelbrot set, +- 8e-8 (published estimates)


def run_job(raw: dict) -> tuple[dict, list[float]]:
    job = MANDELBROT.start(MANDELBROT.validate(raw))
    progress = [job.progress]
    while not job.done:
        job.step()
        progress.append(job.progress)
    return job.result(), progress


@pytest.mark.parametrize(
    "window", [mb.DEFAULT_WINDOW, (-0.8, -0.7, 0.05, 0.15), (-1.9, 0.6, -1.1, 1.3)]
)
def test_kernel_equals_naive(window: tuple[float, float, float, float]) -> None:
    expected = np.array(naive_escape_counts(37, 23, 150, window), dtype=np.uint32)
    for counts in (
        mb.escape_counts(37, 23, 150, window),
        mb.escape_counts(37, 23, 150, window, parallel=False),
        mb.escape_counts_numpy(37, 23, 150, window),
        np.array(mb.escape_counts_python(37, 23, 150, window), dtype=np.uint32),
    ):
        assert counts.dtype == np.uint32 and counts.shape == (23, 37)
        np.testing.assert_array_equal(counts, expected)


@pytest.mark.parametrize("height", [100, 101, 257])
def test_symmetric_about_the_real_axis(height: int) -> None:
    counts = mb.escape_counts(300, height, 500, (-2.1, 0.7, -1.3, 1.3))
    np.testing.assert_array_equal(counts, counts[::-1])


def test_area_converges() -> None:
    window_area = (mb.DEFAULT_WINDOW[1] - mb.DEFAULT_WINDOW[0]) * (
        mb.DEFAULT_WINDOW[3] - mb.DEFAULT_WINDOW[2]
    )
    errors = []
    for width, height, max_iter in ((140, 100, 200), (560, 400, 1000), (1120, 800, 2000)):
        result, _ = run_job({"width": width, "height": height, "maxIterations": max_iter})
        errors.append(abs(result["insideFraction"] * window_area - AREA))
    # The pixel count overestimates (slow escapers count as inside) and its boundary
    # error shrinks only like the pixel size: measured 0.022, 0.0028, 0.0020.
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.005


def test_png_decodes() -> None:
    result, progress = run_job({"width": 123, "height": 45, "maxIterations": 100})
    assert (result["width"], result["height"]) == (123, 45)
    image = Image.open(io.BytesIO(base64.b64decode(result["png"])))
    assert image.format == "PNG" and image.size == (123, 45) and image.mode == "P"
    counts = mb.escape_counts(123, 45, 100)
    pixels = np.asarray(image)
    np.testing.assert_array_equal(pixels == 0, counts == 100)  # inside is palette entry 0
    assert image.getpalette()[:3] == [0, 0, 0]
    assert result["insideFraction"] == np.count_nonzero(counts == 100) / counts.size
    assert progress == sorted(progress) and progress[-1] == 1.0


def test_chunked_equals_one_shot(monkeypatch: pytest.MonkeyPatch) -> None:
    one_shot = run_job({"width": 200, "height": 150, "maxIterations": 300})[0]
    monkeypatch.setattr(config, "MANDEL_CHUNK_ITERATIONS", 1)  # two rows per chunk
    chunked, progress = run_job({"width": 200, "height": 150, "maxIterations": 300})
    assert chunked == one_shot
    assert len(progress) == 77 and progress == sorted(progress)


def test_thread_count_does_not_change_counts() -> None:
    script = (
        "import hashlib, compute.mandelbrot as mb;"
        "c = mb.escape_counts(301, 203, 700, (-1.9, 0.6, -1.1, 1.3));"
        "print(hashlib.sha256(c.tobytes()).hexdigest())"
    )
    digests = set()
    for threads in ("1", "2"):
        env = {**os.environ, "NUMBA_NUM_THREADS": threads}
        out = subprocess.run(
            [sys.executable, "-c", script],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        digests.add(out.stdout.strip())
    assert len(digests) == 1


def test_validate_fills_defaults() -> None:
    params = MANDELBROT.validate({"width": 10, "height": 20, "maxIterations": 30, "xMin": -1})
    assert params == {
        "width": 10,
        "height": 20,
        "maxIterations": 30,
        "xMin": -1.0,
        "xMax": 1.0,
        "yMin": -1.25,
        "yMax": 1.25,
    }
    json.dumps(params)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"height": 1, "maxIterations": 1}, "width"),
        ({"width": 0, "height": 1, "maxIterations": 1}, "width"),
        ({"width": 4097, "height": 1, "maxIterations": 1}, "width"),
        ({"width": 1.5, "height": 1, "maxIterations": 1}, "width"),
        ({"width": True, "height": 1, "maxIterations": 1}, "width"),
        ({"width": 1, "height": 0, "maxIterations": 1}, "height"),
        ({"width": 1, "height": 1, "maxIterations": 0}, "maxIterations"),
        ({"width": 1, "height": 1, "maxIterations": 100_001}, "maxIterations"),
        ({"width": 4096, "height": 4096, "maxIterations": 4096}, "maxIterations"),
        ({"width": 1, "height": 1, "maxIterations": 1, "xMin": float("nan")}, "xMin"),
        ({"width": 1, "height": 1, "maxIterations": 1, "yMax": float("inf")}, "yMax"),
        ({"width": 1, "height": 1, "maxIterations": 1, "xMin": "a"}, "xMin"),
        ({"width": 1, "height": 1, "maxIterations": 1, "xMin": False}, "xMin"),
        ({"width": 1, "height": 1, "maxIterations": 1, "xMin": 1.0}, "xMax"),
        ({"width": 1, "height": 1, "maxIterations": 1, "yMin": 2.0, "yMax": 2.0}, "yMax"),
    ],
)
def test_validate_rejects(raw: dict, field: str) -> None:
    with pytest.raises(ParameterError) as info:
        MANDELBROT.validate(raw)
    assert info.value.field == field


def test_kind() -> None:
    assert MANDELBROT.name == "mandelbrot" and MANDELBROT.description
    MANDELBROT.warm_up()
    job = MANDELBROT.start(MANDELBROT.validate({"width": 2, "height": 2, "maxIterations": 2}))
    with pytest.raises(RuntimeError):
        job.result()
    assert job.partial_result() is None
