"""Families: the NumPy form equals the pure-Python reference, for every family and the
parameter corners (skip, offset, per-seed skip, m that is / is not a power of two)."""

from __future__ import annotations

import numpy as np
import pytest

from prng_workers.errors import InputError
from prng_workers.families import FAMILIES, FAMILY_NAMES, get_family

SEEDS = [0, 1, 42, 2**31 - 1, 2**32 - 1, 2**32, 2**48 - 1, 2**48 + 5, 2**63 + 1, 2**64 - 1, 123456789]


def reference(fam, seeds, count, m, skip, offset):
    skips = skip if isinstance(skip, (list, np.ndarray)) else [skip] * len(seeds)
    rows = [fam.reference_draws(s, count, m, int(k), offset) for s, k in zip(seeds, skips, strict=True)]
    return np.array(rows, dtype=np.int64).reshape(len(seeds), count)


def test_registry_has_the_eight_families():
    assert set(FAMILY_NAMES) == {"java_lcg", "java_random", "mt19937", "minstd", "lcg32", "xorshift32",
                                 "xorshift64", "pcg32"}
    for name in FAMILY_NAMES:
        assert get_family(name).name == name


def test_unknown_family_is_input_error():
    with pytest.raises(InputError, match="unknown family 'nope'"):
        get_family("nope")


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize(("skip", "offset", "m"), [(0, 0, 1000), (3, 0, 1000), (0, 7, 1024), (2, 5, 7)])
def test_numpy_equals_reference(name, skip, offset, m):
    fam = get_family(name)
    got = fam.draws(np.array(SEEDS, dtype=np.uint64), 25, m, skip, offset)
    assert got.dtype == np.int64 and got.shape == (len(SEEDS), 25)
    np.testing.assert_array_equal(got, reference(fam, SEEDS, 25, m, skip, offset))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_per_seed_skip_array(name):
    fam = get_family(name)
    skips = np.array([0, 1, 2, 3, 700, 5, 0, 20, 1, 9, 4], dtype=np.int64)
    got = fam.draws(np.array(SEEDS, dtype=np.uint64), 12, 1000, skips, 3)
    np.testing.assert_array_equal(got, reference(fam, SEEDS, 12, 1000, skips, 3))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_long_stream_crosses_blocks(name):
    # > 624 outputs (mt19937 blocks) and > 64 draws (LCG jump blocks)
    fam = get_family(name)
    got = fam.draws([7, 2**40 + 11], 150, 1000, 4, 1)
    np.testing.assert_array_equal(got, reference(fam, [7, 2**40 + 11], 150, 1000, 4, 1))


def test_draw_i_is_call_offset_plus_i_plus_1_times_skip_plus_1():
    fam = get_family("java_lcg")
    stream = fam.reference_draws(99, 60, 1000)
    want = [stream[4 + (i + 1) * 3 - 1] for i in range(5)]
    assert fam.reference_draws(99, 5, 1000, skip=2, offset=4) == want


@pytest.mark.parametrize("m", [(1 << 30) + 1, 1_500_000_001, 3])
def test_java_random_rejection_loop_matches_reference(m):
    # for m = 2^30+1 nearly half of nextInt's raw values are rejected: the call -> step map shifts
    fam = get_family("java_random")
    seeds = [int(s) for s in np.arange(40) * 7919 + 3]
    skips = np.arange(40) % 4
    got = fam.draws(seeds, 30, m, skips, 2)
    np.testing.assert_array_equal(got, reference(fam, seeds, 30, m, skips, 2))


def test_seeds_stay_uint64_from_python_lists():
    fam = get_family("pcg32")
    # 2**63 + 1 would become float64 through np.asarray(list)
    a = fam.draws([2**63 + 1], 4, 1000)
    b = fam.draws(np.array([2**63 + 1], dtype=np.uint64), 4, 1000)
    np.testing.assert_array_equal(a, b)
    assert a.tolist() == [fam.reference_draws(2**63 + 1, 4, 1000)]


@pytest.mark.parametrize(("kwargs", "msg"), [
    ({"count": -1}, "count"), ({"m": 0}, "modulus"), ({"offset": -2}, "offset"), ({"skip": -1}, "skip"),
])
def test_bad_parameters_raise_input_error(kwargs, msg):
    args = {"count": 3, "m": 1000, "skip": 0, "offset": 0} | kwargs
    with pytest.raises(InputError, match=msg):
        get_family("minstd").draws([1, 2], args["count"], args["m"], args["skip"], args["offset"])


def test_negative_seed_rejected():
    with pytest.raises(InputError):
        get_family("minstd").draws(np.array([-1, 2]), 3, 1000)


def test_java_random_modulus_limit():
    with pytest.raises(InputError, match="modulus"):
        get_family("java_random").draws([1], 3, 2**31)
