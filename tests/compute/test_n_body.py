"""nBody: the Benchmarks Game figures, leapfrog accuracy, conservation, determinism, validation."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crunchql.compute import config
from crunchql.compute import n_body as nb
from crunchql.compute.base import ParameterError
from crunchql.compute.catalog import N_BODY
from tests.compute.naive_kernels import naive_energy, naive_momentum

ROOT = Path(__file__).resolve().parents[2]


def run_job(raw: dict) -> tuple[dict, list[float]]:
    job = N_BODY.start(N_BODY.validate(raw))
    progress = [job.progress]
    while not job.done:
        job.step()
        progress.append(job.progress)
    return job.result(), progress


def test_benchmarks_game_figures() -> None:
    result, progress = run_job({"preset": "SOLAR_SYSTEM", "steps": 1000, "dt": 0.01})
    assert f"{result['initialEnergy']:.9f}" == "-0.169075164"
    assert f"{result['finalEnergy']:.9f}" == "-0.169087605"
    assert result["bodies"] == 5 and result["steps"] == 1000
    assert result["relativeEnergyError"] == pytest.approx(
        abs(result["finalEnergy"] - result["initialEnergy"]) / abs(result["initialEnergy"])
    )
    assert progress == sorted(progress) and progress[-1] == 1.0


def test_solar_system_state_and_energy_against_naive() -> None:
    pos, vel, mu = nb.solar_system()
    assert naive_momentum(vel, mu) == pytest.approx([0.0, 0.0, 0.0], abs=1e-15)
    assert nb.energy(pos, vel, mu) == pytest.approx(naive_energy(pos, vel, mu, 0.0), rel=1e-14)
    pos1, vel1 = nb.advance_symplectic_euler(pos, vel, mu, 1000, 0.01)
    assert f"{naive_energy(pos1, vel1, mu, 0.0):.9f}" == "-0.169087605"


def test_random_cluster_is_deterministic_and_virialised() -> None:
    a = nb.random_cluster(300, 42)
    b = nb.random_cluster(300, 42)
    c = nb.random_cluster(300, 43)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    pos, vel, mu = a
    assert mu.sum() == pytest.approx(4 * np.pi**2)
    kinetic = 0.5 * np.sum(mu * np.sum(vel * vel, axis=1))
    potential = nb.energy(pos, np.zeros_like(vel), mu, nb.SOFTENING)
    assert 2 * kinetic == pytest.approx(-potential, rel=1e-12)
    assert nb.energy(pos, vel, mu, nb.SOFTENING) == pytest.approx(
        naive_energy(pos, vel, mu, nb.SOFTENING), rel=1e-12
    )


def test_leapfrog_error_is_second_order() -> None:
    pos, vel, mu = nb.random_cluster(100, 7)
    e0 = nb.energy(pos, vel, mu, nb.SOFTENING)
    errors = []
    for dt in (4e-3, 2e-3, 1e-3):
        p, v = nb.simulate(pos, vel, mu, round(0.4 / dt), dt)
        errors.append(abs(nb.energy(p, v, mu, nb.SOFTENING) - e0) / abs(e0))
    assert errors[2] < 1e-4
    for coarse, fine in itertools.pairwise(errors):
        assert 3.0 < coarse / fine < 5.0  # ~ dt**2: halving dt divides the error by ~4


def test_momentum_is_conserved() -> None:
    pos, vel, mu = nb.random_cluster(200, 3)
    _p, v = nb.simulate(pos, vel, mu, 200, 2e-3)
    before, after = naive_momentum(vel, mu), naive_momentum(v, mu)
    scale = float(np.sum(mu * np.linalg.norm(vel, axis=1)))
    assert np.allclose(before, 0.0, atol=1e-12 * scale)
    assert np.allclose(after, before, atol=1e-12 * scale)


def test_implementations_agree() -> None:
    pos, vel, mu = nb.random_cluster(40, 11)
    p1, v1 = nb.simulate(pos, vel, mu, 25, 1e-3, parallel=True)
    p2, v2 = nb.simulate(pos, vel, mu, 25, 1e-3, parallel=False)
    p3, v3 = nb.simulate_python(pos, vel, mu, 25, 1e-3)
    p4, v4 = nb.simulate_numpy(pos, vel, mu, 25, 1e-3)
    for p, v in ((p2, v2), (p3, v3)):  # same operations in the same order: same bits
        np.testing.assert_array_equal(p, p1)
        np.testing.assert_array_equal(v, v1)
    np.testing.assert_allclose(p4, p1, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(v4, v1, rtol=1e-11, atol=1e-11)


def test_chunked_equals_one_shot(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = {"preset": "RANDOM_CLUSTER", "bodies": 64, "steps": 37, "dt": 1e-3, "seed": 5}
    one_shot, _ = run_job(raw)
    monkeypatch.setattr(config, "NBODY_CHUNK_PAIRS", 3 * 64 * 64)  # three steps per chunk
    chunked, progress = run_job(raw)
    assert chunked == one_shot
    assert len(progress) == 1 + 13 and progress == sorted(progress)


def test_thread_count_does_not_change_the_result() -> None:
    script = (
        "import json, compute.n_body as nb;"
        "r = nb.run_preset('RANDOM_CLUSTER', 20, 1e-3, bodies=301, seed=9);"
        "print(json.dumps({k: float(v).hex() for k, v in r.items()}))"
    )
    outputs = set()
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
        outputs.add(out.stdout.strip())
    assert len(outputs) == 1


def test_validate_fills_defaults() -> None:
    params = N_BODY.validate({"preset": "RANDOM_CLUSTER", "steps": 10, "dt": 0.01})
    assert params["bodies"] == 1000 and 0 <= params["seed"] <= 2**31 - 1
    solar = N_BODY.validate({"preset": "SOLAR_SYSTEM", "steps": 10, "dt": 1, "bodies": -4})
    assert solar["bodies"] == 5 and solar["dt"] == 1.0 and "seed" in solar
    json.dumps(params)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"steps": 1, "dt": 0.1}, "preset"),
        ({"preset": "GALAXY", "steps": 1, "dt": 0.1}, "preset"),
        ({"preset": "SOLAR_SYSTEM", "dt": 0.1}, "steps"),
        ({"preset": "SOLAR_SYSTEM", "steps": 0, "dt": 0.1}, "steps"),
        ({"preset": "SOLAR_SYSTEM", "steps": 10**6 + 1, "dt": 0.1}, "steps"),
        ({"preset": "SOLAR_SYSTEM", "steps": 2.5, "dt": 0.1}, "steps"),
        ({"preset": "SOLAR_SYSTEM", "steps": True, "dt": 0.1}, "steps"),
        ({"preset": "SOLAR_SYSTEM", "steps": 1}, "dt"),
        ({"preset": "SOLAR_SYSTEM", "steps": 1, "dt": 0.0}, "dt"),
        ({"preset": "SOLAR_SYSTEM", "steps": 1, "dt": -0.1}, "dt"),
        ({"preset": "SOLAR_SYSTEM", "steps": 1, "dt": 1.5}, "dt"),
        ({"preset": "SOLAR_SYSTEM", "steps": 1, "dt": float("nan")}, "dt"),
        ({"preset": "SOLAR_SYSTEM", "steps": 1, "dt": float("inf")}, "dt"),
        ({"preset": "SOLAR_SYSTEM", "steps": 1, "dt": "0.1"}, "dt"),
        ({"preset": "RANDOM_CLUSTER", "steps": 1, "dt": 0.1, "bodies": 1}, "bodies"),
        ({"preset": "RANDOM_CLUSTER", "steps": 1, "dt": 0.1, "bodies": 5001}, "bodies"),
        ({"preset": "RANDOM_CLUSTER", "steps": 10**4, "dt": 0.1, "bodies": 5000}, "steps"),
        ({"preset": "RANDOM_CLUSTER", "steps": 1, "dt": 0.1, "seed": -1}, "seed"),
        ({"preset": "RANDOM_CLUSTER", "steps": 1, "dt": 0.1, "seed": 2**31}, "seed"),
    ],
)
def test_validate_rejects(raw: dict, field: str) -> None:
    with pytest.raises(ParameterError) as info:
        N_BODY.validate(raw)
    assert info.value.field == field


def test_kind() -> None:
    assert N_BODY.name == "nBody" and N_BODY.description
    N_BODY.warm_up()
    job = N_BODY.start(N_BODY.validate({"preset": "SOLAR_SYSTEM", "steps": 1, "dt": 0.01}))
    with pytest.raises(RuntimeError):
        job.result()
    assert job.partial_result() is None
