"""primeCount: known values, the kernel against two independent references, jobs, validation."""

from __future__ import annotations

import random

import pytest

from crunchql.compute import config
from crunchql.compute import prime_count as pc
from crunchql.compute.base import ParameterError
from crunchql.compute.catalog import PRIME_COUNT
from tests.compute.naive_kernels import lucy_prime_count, naive_prime_count

KNOWN = [4, 25, 168, 1229, 9592, 78498, 664579, 5761455, 50847534]  # pi(10**k), k = 1 .. 9


def run_job(limit: int) -> tuple[dict, list[float]]:
    job = PRIME_COUNT.start(PRIME_COUNT.validate({"limit": limit}))
    progress = [job.progress]
    while not job.done:
        job.step()
        progress.append(job.progress)
    return job.result(), progress


@pytest.mark.parametrize("k", range(1, 10))
def test_powers_of_ten(k: int) -> None:
    assert pc.count_primes(10**k) == KNOWN[k - 1]


def test_ten_to_the_ten() -> None:
    result, progress = run_job(10**10)
    assert result == {"limit": 10**10, "count": 455052511}
    assert progress == sorted(progress) and progress[-1] == 1.0 and len(progress) > 10


@pytest.mark.parametrize("limit", [0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 29, 30, 31, 49, 361])
def test_edge_cases(limit: int) -> None:
    expected = naive_prime_count(limit)
    assert pc.count_primes(limit) == expected
    assert pc.count_primes(limit, parallel=False) == expected
    assert pc.count_primes_numpy(limit) == expected
    assert pc.count_primes_python(limit) == expected
    assert run_job(limit)[0] == {"limit": limit, "count": expected}


def test_random_limits_against_naive_sieve() -> None:
    rng = random.Random(20240601)
    for limit in [rng.randrange(2, 3 * 10**5) for _ in range(20)]:
        assert pc.count_primes(limit) == naive_prime_count(limit), limit
    # across block and segment boundaries (blocks are 4 * 128 KiB * 30 numbers)
    block = 30 * config.SEGMENT_BYTES * config.BLOCK_SEGMENTS
    for limit in (block - 1, block, block + 1, 30 * config.SEGMENT_BYTES + 7, 2 * block + 29):
        assert pc.count_primes(limit) == pc.count_primes_numpy(limit), limit


def test_random_large_limits_against_lucy() -> None:
    rng = random.Random(7)
    for limit in [rng.randrange(10**7, 10**9) for _ in range(3)]:
        expected = lucy_prime_count(limit)
        assert pc.count_primes(limit) == expected, limit
        assert pc.count_primes(limit, parallel=False) == expected, limit


def test_numpy_and_python_twins() -> None:
    assert pc.count_primes_numpy(10**7) == 664579
    assert pc.count_primes_python(10**5) == 9592


def test_chunking_does_not_change_the_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "PRIME_CHUNK_BLOCKS", 1)
    result, progress = run_job(123_456_789)
    assert result["count"] == lucy_prime_count(123_456_789)
    assert len(progress) > 5 and progress == sorted(progress)


def test_validate_accepts_bigint_forms() -> None:
    assert PRIME_COUNT.validate({"limit": "10000000000"}) == {"limit": 10**10}
    assert PRIME_COUNT.validate({"limit": 1e3}) == {"limit": 1000}
    assert PRIME_COUNT.validate({"limit": 0}) == {"limit": 0}


@pytest.mark.parametrize(
    "raw",
    [
        {},
        {"limit": None},
        {"limit": -1},
        {"limit": 10**10 + 1},
        {"limit": True},
        {"limit": 2.5},
        {"limit": "ten"},
        {"limit": float("nan")},
    ],
)
def test_validate_rejects(raw: dict) -> None:
    with pytest.raises(ParameterError) as info:
        PRIME_COUNT.validate(raw)
    assert info.value.field == "limit"


def test_kind() -> None:
    assert PRIME_COUNT.name == "primeCount" and PRIME_COUNT.description
    PRIME_COUNT.warm_up()
    job = PRIME_COUNT.start({"limit": 100})
    with pytest.raises(RuntimeError):
        job.result()
    assert job.partial_result() is None


def test_layout_does_not_change_the_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """Segment, block and large-prime sizes are read from config per call, never change a count."""
    limits = [0, 1, 29, 30, 31, 2999, 3000 * 30 + 1, 10**6 + 3, 7_654_321]
    expected = [pc.count_primes(limit) for limit in limits]
    monkeypatch.setattr(config, "SEGMENT_BYTES", 1000)
    monkeypatch.setattr(config, "BLOCK_SEGMENTS", 3)
    monkeypatch.setattr(config, "LARGE_PRIME_BYTES", 100)
    assert [pc.count_primes(limit) for limit in limits] == expected
    assert [pc.count_primes(limit, parallel=False) for limit in limits] == expected
    result, _ = run_job(7_654_321)
    assert result["count"] == expected[-1]
