"""The counter-based RNG: the numba, Python and NumPy forms agree with the specification."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from crunchql.compute import random as rng
from tests.compute import naive

SEEDS_BLOCKS = [(0, 0), (1, 0), (0, 1), (12345, 7), (2**31 - 1, 10**6)]


@njit(cache=True)
def _uniforms(seed, block, count):
    key = rng.stream_key(seed, block)
    out = np.empty(count)
    for i in range(count):
        out[i] = rng.uniform_at(key, i)
    return out


@njit(cache=True)
def _words(seed, block, count):
    key = rng.stream_key(seed, block)
    out = np.empty(count, dtype=np.uint64)
    for i in range(count):
        out[i] = rng.uint64_at(key, i)
    return out


@njit(cache=True)
def _normals(seed, block, pairs):
    key = rng.stream_key(seed, block)
    out = np.empty(2 * pairs)
    for m in range(pairs):
        out[2 * m], out[2 * m + 1] = rng.normal_pair(key, m)
    return out


def test_mix64_known_values() -> None:
    # SplitMix64 seeded with 0 yields mix64(GAMMA), mix64(2 GAMMA), ... - published values
    assert rng.mix64_py(0x9E3779B97F4A7C15) == 0xE220A8397B1DCDAF
    assert rng.mix64_py(2 * 0x9E3779B97F4A7C15) == 0x6E789E6AA1B965F4
    assert rng.mix64_py(0) == 0
    assert int(rng.mix64(np.uint64(0x9E3779B97F4A7C15))) == 0xE220A8397B1DCDAF


def test_numba_words_match_specification() -> None:
    for seed, block in SEEDS_BLOCKS:
        words = _words(seed, block, 64)
        assert words.dtype == np.uint64
        expected = [naive.naive_uint64(seed, block, i) for i in range(64)]
        assert [int(w) for w in words] == expected


def test_uniforms_match_in_all_forms() -> None:
    for seed, block in SEEDS_BLOCKS:
        key = rng.stream_key_py(seed, block)
        expected = [naive.naive_double(seed, block, i) for i in range(100)]
        assert _uniforms(seed, block, 100).tolist() == expected
        assert rng.uniforms_np(key, 0, 100).tolist() == expected
        assert [rng.uniform_at_py(key, i) for i in range(100)] == expected
        assert all(0.0 <= u < 1.0 for u in expected)


def test_normals_match_in_all_forms() -> None:
    for seed, block in SEEDS_BLOCKS:
        key = rng.stream_key_py(seed, block)
        expected = [naive.naive_normal(seed, block, q) for q in range(100)]
        assert _normals(seed, block, 50).tolist() == expected
        assert rng.normals_np(key, 0, 50).tolist() == expected
        assert [rng.normal_at_py(key, q) for q in range(100)] == expected


def test_uniform_moments() -> None:
    n = 200_000
    u = rng.uniforms_np(rng.stream_key_py(42, 3), 0, n)
    # mean 1/2 with sd 1/sqrt(12 n); variance 1/12 with sd ~ sqrt(1/180 / n)
    assert abs(u.mean() - 0.5) < 5 / math.sqrt(12 * n)
    assert abs(u.var() - 1 / 12) < 5 * math.sqrt(1 / 180 / n)


def test_normal_moments() -> None:
    n = 200_000
    z = rng.normals_np(rng.stream_key_py(7, 0), 0, n // 2)
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.var() - 1.0) < 5 * math.sqrt(2 / n)
    # lag-1 correlation (cosine/sine partners are independent)
    corr = np.corrcoef(z[:-1], z[1:])[0, 1]
    assert abs(corr) < 5 / math.sqrt(n)
    # tail: P(|Z| > 2) = 0.0455
    share = np.mean(np.abs(z) > 2.0)
    assert abs(share - 0.04550026) < 5 * math.sqrt(0.0455 * 0.9545 / n)


def test_streams_differ() -> None:
    a = _uniforms(1, 0, 16)
    assert not np.array_equal(a, _uniforms(2, 0, 16))
    assert not np.array_equal(a, _uniforms(1, 1, 16))
    assert np.array_equal(a, _uniforms(1, 0, 16))
