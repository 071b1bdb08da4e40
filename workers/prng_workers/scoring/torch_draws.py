"""The families' draws made by torch ops on the scoring device, written straight into one
tensor there (Step 3 on torch: no NumPy draws on the CPU, no host-to-device copy of them).

Same definition as `Family.draws` (draw i = output of call offset + (i+1)(skip+1), mod m, per
seed skip); tests require equality with NumPy on torch's CPU build, the same code path as on
a GPU. torch has no uint64: states are int64 with wrap-around multiplication, and every right
shift of a value that can be negative is masked (a logical shift).

- affine families: jump-ahead in blocks of BLOCK columns (as `Affine.states_at`);
- java_random: the same jump-ahead for its LCG, then a scan of every step of every seed for
  nextInt's rejection (rare: about 3e-7 a step for m = 1000); the few seeds that hit one get
  NumPy's exact draws (`JavaRandom.draws`) instead;
- xorshift: the GF(2) jump matrices as 16-bit lookup tables (as `XorshiftFamily.draws`);
- mt19937: the 624-word state of every seed on the device, twisted block by block.
"""

from __future__ import annotations

import numpy as np
import torch

from prng_workers.families import get_family
from prng_workers.families.base import as_seed_array, as_skip_array, check_params
from prng_workers.families.java_random import reject_limit
from prng_workers.families.mt19937 import INIT_MULT, MATRIX_A, M, N

BLOCK = 64  # affine: columns per jump-ahead block
SCAN = 4096  # java_random: steps per rejection-scan block
M32 = 0xFFFFFFFF
M48 = (1 << 48) - 1


def draw_dtype(m: int) -> torch.dtype:
    """The narrowest signed type holding [0, m): int16 for the usual m (the features accept it)."""
    return torch.int16 if m <= 1 << 15 else torch.int32 if m <= 1 << 31 else torch.int64


def _i64(v: int) -> int:
    """A uint64 value as the int64 with the same bits."""
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns."""
    return (x >> s) & ((1 << (64 - s)) - 1) if s else x


def draws(
    family_name: str,
    seeds: np.ndarray,
    count: int,
    m: int,
    skip: np.ndarray | int = 0,
    offset: int = 0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """[n, count] draws on `device` (dtype `draw_dtype(m)`), equal to `Family.draws`."""
    fam = get_family(family_name)
    check_params(count, m, offset, fam.max_mod)
    s = as_seed_array(seeds)
    sk = as_skip_array(skip, s.size)
    dev = torch.device(device)
    out = torch.empty((s.size, count), dtype=draw_dtype(m), device=dev)
    if s.size == 0 or count == 0:
        return out
    seeds_t = torch.from_numpy(s.view(np.int64)).to(dev)
    if family_name in ("java_lcg", "minstd", "lcg32", "pcg32", "java_random"):
        _affine(fam, family_name, seeds_t, sk, count, m, int(offset), out)
        if family_name == "java_random":
            _java_rejections(fam, s, seeds_t, sk, count, m, int(offset), out)
    elif family_name in ("xorshift32", "xorshift64"):
        _xorshift(fam, seeds_t, sk, count, m, int(offset), out)
    elif family_name == "mt19937":
        _mt19937(seeds_t, sk, count, m, int(offset), out)
    else:  # pragma: no cover - every family is handled above
        raise ValueError(f"no torch draws for {family_name}")
    return out


# ---------------------------------------------------------------- affine (and java_random's LCG)


def _affine(
    fam, name: str, seeds: torch.Tensor, sk: np.ndarray, count: int, m: int, offset: int, out: torch.Tensor
) -> None:
    lcg = fam.lcg
    mod = lcg.mod
    dev = seeds.device

    def reduce(v: torch.Tensor) -> torch.Tensor:
        if mod == 1 << 64:
            return v
        return v & (mod - 1) if mod & (mod - 1) == 0 else v % mod

    def const(vals: list[int]) -> torch.Tensor:
        return torch.tensor([_i64(v) for v in vals], dtype=torch.int64, device=dev)

    if name == "java_lcg":
        x0 = seeds & M48
    elif name == "minstd":
        x0 = torch.remainder(_shr(seeds, 1), (1 << 31) - 1) * 2 + (seeds & 1)  # seed mod p, unsigned
        x0 = torch.remainder(x0, (1 << 31) - 1)
        x0 = torch.where(x0 == 0, torch.ones_like(x0), x0)
    elif name == "lcg32":
        x0 = torch.remainder(seeds & M32, (1 << 31) - 1)
    elif name == "pcg32":
        x0 = seeds
    else:  # java_random: the scrambled seed
        x0 = (seeds ^ 0x5DEECE66D) & M48
    first = offset - (1 if getattr(fam, "output_before_step", False) else 0)
    uniq, inv_np = np.unique(sk, return_inverse=True)
    inv = torch.from_numpy(inv_np.astype(np.int64)).to(dev)
    stride = (uniq + 1).tolist()
    width = min(BLOCK, count)

    def mul_add(a: torch.Tensor, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if mod == (1 << 31) - 1:  # operands < 2^31: the product fits in int64
            return torch.remainder(a * x + c, mod)
        return reduce(a * x + c)

    a0 = const([lcg.jump_int(first + st)[0] for st in stride])[inv]
    c0 = const([lcg.jump_int(first + st)[1] for st in stride])[inv]
    x = mul_add(a0, x0, c0)
    ta = const([lcg.jump_int(j * st)[0] for st in stride for j in range(width)]).view(len(stride), width)[inv]
    tc = const([lcg.jump_int(j * st)[1] for st in stride for j in range(width)]).view(len(stride), width)[inv]
    ab = const([lcg.jump_int(width * st)[0] for st in stride])[inv]
    cb = const([lcg.jump_int(width * st)[1] for st in stride])[inv]
    for i0 in range(0, count, width):
        w = min(width, count - i0)
        X = mul_add(ta[:, :w], x[:, None], tc[:, :w])
        out[:, i0 : i0 + w] = _affine_out(name, X, m).to(out.dtype)
        x = mul_add(ab, x, cb)


def _affine_out(name: str, x: torch.Tensor, m: int) -> torch.Tensor:
    if name == "java_lcg":
        v = (x >> 16) & M32
    elif name == "pcg32":
        xs = _shr(_shr(x, 18) ^ x, 27) & M32
        rot = _shr(x, 59)
        v = ((xs >> rot) | (xs << ((32 - rot) & 31))) & M32
    elif name == "java_random":
        bits = x >> 17
        if m & (m - 1) == 0:
            return (bits * m) >> 31
        return torch.remainder(bits, m)
    else:
        v = x
    return torch.remainder(v, m)


def x_rows(t: torch.Tensor) -> int:
    return max(1, int(t.shape[0]))


def _java_rejections(
    fam,
    s: np.ndarray,
    seeds: torch.Tensor,
    sk: np.ndarray,
    count: int,
    m: int,
    offset: int,
    out: torch.Tensor,
) -> None:
    """Seeds whose first offset + count*(skip+1) steps include a rejected state get NumPy's
    exact draws (the jump-ahead above assumed one step per call)."""
    limit = reject_limit(m)
    if limit == 0:
        return
    dev = seeds.device
    lcg = fam.lcg
    steps = torch.from_numpy((offset + count * (sk + 1)).astype(np.int64)).to(dev)
    width = max(64, min(SCAN, int(steps.max()), (1 << 24) // x_rows(seeds)))  # <= 128 MB a block
    ta = torch.tensor([lcg.jump_int(j + 1)[0] for j in range(width)], dtype=torch.int64, device=dev)
    tc = torch.tensor([lcg.jump_int(j + 1)[1] for j in range(width)], dtype=torch.int64, device=dev)
    x = (seeds ^ 0x5DEECE66D) & M48
    hit = torch.zeros(x.shape[0], dtype=torch.bool, device=dev)
    col = torch.arange(1, width + 1, device=dev)
    for done in range(0, int(steps.max()), width):
        X = (ta * x[:, None] + tc) & M48  # states after steps done+1 .. done+width
        hit |= ((X >= limit) & (col + done <= steps[:, None])).any(dim=1)
        x = X[:, -1]
    rows = torch.nonzero(hit).flatten().cpu().numpy()
    if rows.size:
        exact = fam.draws(s[rows], count, m, sk[rows], offset)
        out[torch.from_numpy(rows).to(dev)] = torch.from_numpy(exact).to(dev, out.dtype)


# ---------------------------------------------------------------- xorshift


def _xorshift(
    fam, seeds: torch.Tensor, sk: np.ndarray, count: int, m: int, offset: int, out: torch.Tensor
) -> None:
    dev = seeds.device
    bits = fam.bits
    chunks = bits // 16
    x0 = seeds & ((1 << bits) - 1) if bits < 64 else seeds
    uniq, inv_np = np.unique(sk, return_inverse=True)

    def tables(k: int) -> torch.Tensor:
        return torch.from_numpy(fam.tables_for(k).view(np.int64).reshape(-1)).to(dev)

    def apply(flat: torch.Tensor, base: torch.Tensor | int, x: torch.Tensor) -> torch.Tensor:
        r = torch.zeros_like(x)
        for c in range(chunks):
            part = _shr(x, 16 * c) & 0xFFFF
            r ^= flat.take(base + (c << 16) + part)
        return r

    x = torch.empty_like(x0)
    for u, value in enumerate(uniq.tolist()):
        rows = torch.from_numpy(np.nonzero(inv_np == u)[0]).to(dev)
        x[rows] = apply(tables(offset + value + 1), 0, x0[rows])
    flat = torch.cat([tables(v + 1) for v in uniq.tolist()])
    base = torch.from_numpy(inv_np.astype(np.int64) * (chunks << 16)).to(dev)
    for i in range(count):
        if i:
            x = apply(flat, base, x)
        v = x & M32 if bits == 32 else (x * _i64(0x2545F4914F6CDD1D)) & M32
        out[:, i] = torch.remainder(v, m).to(out.dtype)


# ---------------------------------------------------------------- mt19937


def _mt_twist_rows(mt: torch.Tensor, lo: int, hi: int, src: int) -> None:
    y = (mt[:, lo:hi] & 0x80000000) | (mt[:, lo + 1 : hi + 1] & 0x7FFFFFFF)
    mt[:, lo:hi] = mt[:, lo + src : hi + src] ^ (y >> 1) ^ ((y & 1) * MATRIX_A)


def _mt_twist(mt: torch.Tensor) -> None:
    """In-place twist (the order of `twist_np`: only final words are read)."""
    _mt_twist_rows(mt, 0, N - M, M)
    _mt_twist_rows(mt, N - M, 2 * (N - M), M - N)
    _mt_twist_rows(mt, 2 * (N - M), N - 1, M - N)
    y = (mt[:, N - 1] & 0x80000000) | (mt[:, 0] & 0x7FFFFFFF)
    mt[:, N - 1] = mt[:, M - 1] ^ (y >> 1) ^ ((y & 1) * MATRIX_A)


def _mt_temper(y: torch.Tensor) -> torch.Tensor:
    y = y ^ (y >> 11)
    y = y ^ ((y << 7) & 0x9D2C5680)
    y = y ^ ((y << 15) & 0xEFC60000)
    return y ^ (y >> 18)


def _mt19937(seeds: torch.Tensor, sk: np.ndarray, count: int, m: int, offset: int, out: torch.Tensor) -> None:
    dev = seeds.device
    n = seeds.shape[0]
    # rows sorted by their last needed output, most first: the rows still needing outputs are
    # a prefix, and each twist works on those only (per-seed skips vary)
    stride_all = sk + 1
    last_all = offset + count * stride_all - 1
    order = np.argsort(-last_all, kind="stable")
    stride_np, last = stride_all[order], last_all[order]
    stride = torch.from_numpy(stride_np).to(dev)
    mt = torch.empty((n, N), dtype=torch.int64, device=dev)
    x = seeds[torch.from_numpy(order).to(dev)] & M32
    mt[:, 0] = x
    for i in range(1, N):
        x = (INIT_MULT * (x ^ (x >> 30)) + i) & M32
        mt[:, i] = x
    res = torch.empty((n, count), dtype=out.dtype, device=dev)
    for block in range(int(last[0]) // N + 1):
        lo, hi = block * N, (block + 1) * N
        act = int(np.searchsorted(-last, -lo, side="right"))  # rows with last >= lo
        view = mt[:act]
        _mt_twist(view)
        st = stride[:act]
        start = torch.clamp(torch.div(lo - offset + 1 + st - 1, st, rounding_mode="floor") - 1, 0, count)
        stop = torch.clamp(torch.div(hi - offset, st, rounding_mode="floor"), 0, count)
        lens = torch.clamp(stop - start, min=0)
        total = int(lens.sum())
        if total == 0:
            continue
        rows = torch.repeat_interleave(torch.arange(act, device=dev), lens)
        first = torch.cumsum(lens, 0) - lens
        idx = start[rows] + (torch.arange(total, device=dev) - first[rows])
        pos = offset + (idx + 1) * st[rows] - 1 - lo
        res[rows, idx] = torch.remainder(_mt_temper(view[rows, pos]), m).to(out.dtype)
    out[torch.from_numpy(order).to(dev)] = res
