"""The PRNG family registry (spec §2). `get_family(name)`, `FAMILY_NAMES`, `FAMILIES`.

Each family has `reference_draws(seed, count, m, skip=0, offset=0) -> list[int]` (scalar,
pure Python, walks the stream call by call) and
`draws(seeds: uint64[n], count, m, skip=0 | int64[n], offset=0) -> int64[n, count]` (NumPy).
Draw i = g(T^(offset + (i+1)(skip+1))(init(seed))) mod m.
"""

from __future__ import annotations

from prng_workers.errors import InputError
from prng_workers.families.base import Family, as_seed_array, as_skip_array, call_index
from prng_workers.families.java_random import JavaRandom
from prng_workers.families.lcg import AffineFamily, JavaLCG, Lcg32, Minstd, Pcg32
from prng_workers.families.mt19937 import MT19937
from prng_workers.families.xorshift import Xorshift32, Xorshift64, XorshiftFamily

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (JavaLCG(), JavaRandom(), MT19937(), Minstd(), Lcg32(), Xorshift32(), Xorshift64(), Pcg32())
}
FAMILY_NAMES: tuple[str, ...] = tuple(FAMILIES)


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise InputError(f"unknown family {name!r} (known: {', '.join(FAMILY_NAMES)})") from None


__all__ = [
    "FAMILIES", "FAMILY_NAMES", "AffineFamily", "Family", "InputError", "XorshiftFamily",
    "as_seed_array", "as_skip_array", "call_index", "get_family",
]
