#!/usr/bin/env python3
"""The affine sieve kernels (java_lcg, minstd, lcg32, pcg32) against this CPU's own ceiling.

The ceiling is an instruction-mix model: per 8 draw-tests (one 512-bit vector of seeds at one
skip and one draw) the fewest vector instructions the loop must issue, split into classes,
and this core's measured issue rate for each class. Rates come from micro-loops compiled the
same way as the kernels (Numba, explicit LLVM vector IR, 16 independent chains so latency does
not limit them, one thread): `alu` (vpaddq/vpxorq), `mul` (vpmullq), `ifma` (vpmadd52luq),
`shift` (vprolq). Time per 8 draw-tests >= max(all ops / alu rate, mul-class ops / mul rate,
shifts / shift rate); the ceiling is 8 draw-tests over that time (a bound: it assumes perfect
scheduling, no loop overhead and no early stop). Minimal mix per family (`MIX`, per 8 lanes;
register copies that the destructive vpmadd52luq needs are not counted, move elimination
makes them free of execution):

  java_lcg (IFMA): out = x >> 16 (1 shift); match = rt + lo52(out*M) < 2^32: vpmadd52luq,
      vpcmpltuq, masked vpsubq (3, 1 mul-class); step = vpmadd52luq, vpandq    -> 6 ops, 2 mul, 1 shift
  java_lcg (no IFMA): match = vpmullq, vpsubq, vpcmpltuq, masked vpsubq (4);
      step = vpmullq, vpaddq, vpandq                                            -> 8 ops, 2 mul, 1 shift
  minstd / lcg32 (IFMA): match (3); step = vpmuludq, vpaddq, fold mod 2^31-1
      (vpandq, vpsrlq, vpaddq, then twice vpsubq + vpminuq)                     -> 12 ops, 2 mul, 1 shift
  pcg32 (IFMA): out = XSH-RR (vpsrlq x3, vpxorq, vpmovqd x2, vprorvd, vpmovzxdq);
      match (3); step = vpmullq, vpaddq                                         -> 13 ops, 2 mul, 4 shift

The kernel side runs `cpu.sieve_range` (the Step 1 compiled path) on java_lcg etc. with k = 512,
skips 0..20, m = 1000, tau = 0.01 (need 6): draw-tests = seeds x 21 x 512, per CPU-second of
the process (all threads), i.e. per core. The sides alternate A, B, A, B in one run. The loop's
own mix (vector instructions per draw-test in the compiled inner loop, read from a fresh
compile's machine code) is printed next to it, with the ceiling that mix alone would allow.

    .venv/bin/python bench/pair_sieve_ceiling.py [--families java_lcg minstd lcg32 pcg32]
        [--seeds 400000] [--rounds 3] [--threads 1] [--json-out ceiling.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from prng_workers.backends import cpu

CHAINS = 16
# per 8 draw-tests: (all vector ops, mul-class ops, shifts)
MIX = {
    ("java_lcg", True): (6, 2, 1),
    ("java_lcg", False): (8, 2, 1),
    ("minstd", True): (12, 2, 1),
    ("minstd", False): (13, 2, 1),
    ("lcg32", True): (12, 2, 1),
    ("lcg32", False): (13, 2, 1),
    ("pcg32", True): (13, 2, 4),
    ("pcg32", False): (14, 2, 4),
}


def _micro(kind: str):
    """A compiled loop of `iters` x CHAINS independent ops of one class on <8 x i64>."""
    vt = ir.VectorType(ir.IntType(64), 8)

    @intrinsic
    def loop(typingctx, iters):
        def codegen(context, builder, sig, args):
            slots = [cgutils.alloca_once(builder, vt) for _ in range(CHAINS)]
            for c, slot in enumerate(slots):
                builder.store(cpu._vconst(vt, 0x1234567 + 77 * c), slot)
            k1, k2 = cpu._vconst(vt, 0x9E3779B97F4A7C15), cpu._vconst(vt, 0x5DEECE66D)
            madd = cpu._intrinsic_fn(builder, "llvm.x86.avx512.vpmadd52l.uq.512", vt, [vt, vt, vt])
            rot = cpu._intrinsic_fn(builder, "llvm.fshl.v8i64", vt, [vt, vt, vt])
            with cgutils.for_range(builder, args[0]):
                for slot in slots:
                    x = builder.load(slot)
                    if kind == "alu":  # two simple ops, so no add recurrence can be folded
                        x = builder.xor(builder.add(x, k1), k2)
                    elif kind == "mul":  # x*x: a chain of constant multiplies would fold into one
                        x = builder.mul(x, x)
                    elif kind == "ifma":
                        x = builder.call(madd, [x, x, k2])
                    else:  # rotate by a variable amount (constant rotates fold into one)
                        x = builder.call(rot, [x, x, x])
                    builder.store(x, slot)
            acc = builder.load(slots[0])
            for slot in slots[1:]:
                acc = builder.xor(acc, builder.load(slot))
            return builder.extract_element(acc, ir.Constant(ir.IntType(32), 0))

        return types.int64(iters), codegen

    @njit
    def run(iters):
        return loop(iters)

    return run


OPS_PER_ITER = {"alu": 2 * CHAINS, "mul": CHAINS, "ifma": CHAINS, "shift": CHAINS}

MIX_VECS = 8  # vectors of seeds per mix loop iteration, as in the kernels


def _mix_loop(family: int, variant: int):
    """The draw-test mix alone: the kernel's own output / compare / step IR on MIX_VECS vectors
    of seeds, with a constant residue and no memory or loop bookkeeping. Its rate is the
    practical ceiling of that mix on this core (port contention included)."""
    vt = ir.VectorType(ir.IntType(64), 8)
    ifma = bool(variant & cpu.IFMA)

    @intrinsic
    def loop(typingctx, iters, opaque):
        def codegen(context, builder, sig, args):
            xs = [cgutils.alloca_once(builder, vt) for _ in range(MIX_VECS)]
            cs = [cgutils.alloca_once(builder, vt) for _ in range(MIX_VECS)]
            for v in range(MIX_VECS):
                builder.store(cpu._vconst(vt, (0x123456789 * (v + 1)) & 0x7FFFFFFF), xs[v])
                builder.store(cpu._vconst(vt, 0), cs[v])
            big = -(-(1 << 52) // 1000) if ifma else -(-(1 << 64) // 1000)
            mc, lim = cpu._vconst(vt, big), cpu._vconst(vt, 1 << 32)
            rv = cpu._vconst(vt, (-7 * big) % (1 << 64) if ifma else (7 * big) % (1 << 64))
            a, c = cpu._vconst(vt, 0x5DEECE66D), cpu._vconst(vt, 0xB)
            m1 = cpu._splat(builder, args[1], vt)  # an opaque -1, as in the kernel
            madd = cpu._intrinsic_fn(builder, "llvm.x86.avx512.vpmadd52l.uq.512", vt, [vt, vt, vt])
            with cgutils.for_range(builder, args[0]):
                for v in range(MIX_VECS):
                    x = builder.load(xs[v])
                    out = cpu._affine_out_ir(builder, family, x, vt)
                    if ifma:
                        hit = builder.icmp_unsigned("<", builder.call(madd, [rv, out, mc]), lim)
                    else:
                        hit = builder.icmp_unsigned("<", builder.sub(builder.mul(out, mc), rv), lim)
                    cv = builder.load(cs[v])
                    builder.store(builder.select(hit, builder.sub(cv, m1), cv), cs[v])
                    builder.store(cpu._affine_step_ir(builder, family, variant, x, a, c, vt), xs[v])
            acc = builder.load(cs[0])
            for v in range(MIX_VECS):
                acc = builder.xor(acc, builder.xor(builder.load(cs[v]), builder.load(xs[v])))
            return builder.extract_element(acc, ir.Constant(ir.IntType(32), 0))

        return types.int64(iters, opaque), codegen

    @njit
    def run(iters):
        return loop(iters, -1)

    return run


def mix_rate(fn, iters: int) -> float:
    """Draw-tests per CPU-second of a mix loop (best of 3)."""
    best = 0.0
    for _ in range(3):
        t0 = time.process_time()
        fn(iters)
        best = max(best, MIX_VECS * 8 * iters / max(time.process_time() - t0, 1e-9))
    return best


def calibrate(kernels: dict, iters: int) -> dict[str, float]:
    """Vector ops per CPU-second of one core, per class (best of 3)."""
    rates = {}
    for kind, fn in kernels.items():
        best = 0.0
        for _ in range(3):
            t0 = time.process_time()
            fn(iters)
            dt = time.process_time() - t0
            best = max(best, OPS_PER_ITER[kind] * iters / max(dt, 1e-9))
        rates[kind] = best
    return rates


def ceiling(mix: tuple[int, int, int], rates: dict[str, float], ifma: bool) -> float:
    total, mul, shift = mix
    mul_rate = rates["ifma"] if ifma and "ifma" in rates else rates["mul"]
    t = max(total / rates["alu"], mul / min(mul_rate, rates["mul"]), shift / rates["shift"])
    return 8.0 / t


def kernel_rate(family: str, seeds: int, r: np.ndarray, variant: int) -> tuple[float, float]:
    """(draw-tests per CPU-second, per wall second) of the compiled sieve."""
    w0, c0 = time.perf_counter(), time.process_time()
    cpu.sieve_range(family, 10**9, 10**9 + seeds, r, 1000, 0, 0, 20, 6, variant)
    wall, cpu_s = time.perf_counter() - w0, time.process_time() - c0
    tests = seeds * 21 * r.size
    return tests / cpu_s, tests / wall


def own_mix(family: str, variant: int) -> dict:
    """Vector instructions per draw-test in the compiled draw loop, from a fresh compile's
    machine code (the cached one shows none). The loop of the compare mode used at m = 1000
    (mode 3 with IFMA, else mode 0: the unsigned compare vpcmpltuq) starts at the block with
    those compares and runs to the jump back to it; the every-32-draws check block (vpmaxsq)
    is left out."""
    fam_id = {"java_lcg": 0, "minstd": 1, "lcg32": 2, "pcg32": 3}[family]
    fn = njit(parallel=True)(cpu.affine_kernel(fam_id, variant).py_func)
    best = np.empty(100, np.int32)
    u = lambda *v: np.array(v, dtype=np.uint64)  # noqa: E731
    fn(
        np.uint64(0),
        np.int64(100),
        u(1, 2),
        np.int64(0),
        np.uint64(7),
        np.int64(1),
        np.int64(0),
        u(3),
        u(5),
        u(3),
        u(5),
        best,
        best.copy(),
        2,
    )
    asm = "\n".join(fn.inspect_asm().values())
    blocks = [b.splitlines() for b in re.split(r"\n(?=\.LBB)", asm)]
    ops = [[ln.split()[0] for ln in b[1:] if ln.startswith("\t") and ln.split()] for b in blocks]
    marker = "vpmadd52luq" if variant & cpu.IFMA else "vpmullq"

    def score(k: int) -> tuple[int, int]:
        return (sum(op == "vpcmpltuq" for op in ops[k]), sum(op == marker for op in ops[k]))

    start = max(range(len(blocks)), key=score)
    label = blocks[start][0].split(":")[0]
    body: list[str] = []
    for k in range(start, len(blocks)):
        piece: list[str] = []  # straight-line pieces: a branch ends one
        for op in ops[k] + ["j-end"]:
            piece.append(op)
            if op.startswith("j"):
                if "vpmaxsq" not in piece:
                    body += piece
                piece = []
        if any(ln.split()[-1] == label for ln in blocks[k][1:] if ln.strip().startswith("j")):
            break
    compares = sum(op == "vpcmpltuq" for op in body)
    tests = compares * (8 if variant & cpu.WIDE else 4)
    vec = [op for op in body if op.startswith(("v", "k"))]
    return {
        "vector_instructions": len(vec),
        "draw_tests": tests,
        "ops": sorted(set(vec)),
        "per_8_draw_tests": len(vec) * 8 / tests if tests else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=["java_lcg", "minstd", "lcg32", "pcg32"])
    ap.add_argument("--seeds", type=int, default=400_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=4_000_000, help="micro-loop iterations")
    ap.add_argument(
        "--threads", type=int, default=0, help="Numba threads for the kernel side (0: its default)"
    )
    ap.add_argument("--json-out")
    args = ap.parse_args()
    if args.threads:
        numba.set_num_threads(args.threads)
    if not cpu.HAS_AVX512:
        raise SystemExit(
            "this CPU has no AVX-512: the 512-bit ceiling does not apply (the kernels run 256-bit)"
        )
    kinds = ["alu", "mul", "shift"] + (["ifma"] if cpu.HAS_IFMA else [])
    micro = {k: _micro(k) for k in kinds}
    for fn in micro.values():
        fn(10)  # compile outside the timing
    rng = np.random.default_rng(1)
    r = rng.integers(0, 1000, 512)
    variant = cpu.FAST["affine"]
    for fam in args.families:
        cpu.sieve_range(fam, 0, 128, r, 1000, 0, 0, 20, 6, variant)  # compile / load
    load0 = os.getloadavg()
    uptime0 = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    fam_ids = {"java_lcg": 0, "minstd": 1, "lcg32": 2, "pcg32": 3}
    mixes = {f: _mix_loop(fam_ids[f], variant) for f in args.families}
    for fn in mixes.values():
        fn(10)
    cal, runs = [], {f: [] for f in args.families}
    for _ in range(args.rounds):
        cal.append(calibrate(micro, args.iters))
        cal[-1] |= {f"mix_{f}": mix_rate(fn, args.iters // 4) for f, fn in mixes.items()}
        print(json.dumps({"calibration_ops_per_cpu_s": cal[-1]}), flush=True)
        for fam in args.families:
            per_cpu, per_wall = kernel_rate(fam, args.seeds, r, variant)
            runs[fam].append({"draw_tests_per_cpu_s": per_cpu, "draw_tests_per_s": per_wall})
            print(json.dumps({"family": fam, "variant": variant, **runs[fam][-1]}), flush=True)
    rates = {k: statistics.median(c[k] for c in cal) for k in cal[0]}
    rows = []
    for fam in args.families:
        ifma = bool(variant & cpu.IFMA)
        mix = MIX[(fam, ifma)]
        top = ceiling(mix, rates, ifma)
        got = statistics.median(x["draw_tests_per_cpu_s"] for x in runs[fam])
        wall = statistics.median(x["draw_tests_per_s"] for x in runs[fam])
        own = own_mix(fam, variant)
        own_top = 8.0 * rates["alu"] / own["per_8_draw_tests"] if own.get("per_8_draw_tests") else None
        rows.append(
            {
                "family": fam,
                "ifma": ifma,
                "min_mix_per_8": mix,
                "ceiling_per_core": top,
                "mix_loop_per_core": rates[f"mix_{fam}"],
                "measured_per_cpu_s": got,
                "measured_per_s_wall": wall,
                "fraction_of_ceiling": got / top,
                "fraction_of_mix_loop": got / rates[f"mix_{fam}"],
                "own_loop": own,
                "own_mix_ceiling_per_core": own_top,
            }
        )
    report = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
        "command": "python bench/pair_sieve_ceiling.py " + " ".join(sys.argv[1:]),
        "cpu_features": sorted(f for f in cpu.FEATURES if f.startswith("avx512")),
        "numba_threads": numba.get_num_threads(),
        "loadavg_before": load0,
        "uptime_before": uptime0,
        "loadavg_after": os.getloadavg(),
        "uptime_after": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "vector_ops_per_cpu_s": rates,
        "rows": rows,
    }
    print(json.dumps(report, indent=1))
    print(
        "\n| family | min mix / 8 tests (ops, mul, shift) | model ceiling / core | mix loop / core | "
        "kernel / CPU-s | x model | x mix loop | own loop: vec instr / 8 tests |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for x in rows:
        own = x["own_loop"].get("per_8_draw_tests") or float("nan")
        print(
            f"| {x['family']}{' (IFMA)' if x['ifma'] else ''} | {x['min_mix_per_8']} | "
            f"{x['ceiling_per_core']:.3g} | {x['mix_loop_per_core']:.3g} | {x['measured_per_cpu_s']:.3g} | "
            f"{x['fraction_of_ceiling']:.2f} | {x['fraction_of_mix_loop']:.2f} | {own:.1f} |"
        )
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump({"report": report, "calibration": cal, "runs": runs}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
