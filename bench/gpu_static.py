#!/usr/bin/env python3
"""Static GPU check of the sieve kernel: compile every family's kernel for sm_90 with NVRTC (the
compiler CuPy's RawKernel uses), exactly as the launcher builds it, and read the machine code.

    .venv/bin/python bench/gpu_static.py [--families ...] [--arch sm_90] [--rev GIT_REV] [--sass-dir D]
                                         [--mod M] [--table]

Needs no GPU: NVRTC (`nvidia-cuda-nvrtc`) and nvdisasm (`nvidia-cuda-nvdisasm`) come from the
NVIDIA wheels that `make setup` installs (requirements.txt). Prints one JSON line per family:

- `regs`, `local_bytes` (the stack frame: per-thread local memory), `spill_stores`/`spill_loads`
  (bytes), from ptxas' report (`--ptxas-options=-v`);
- `loops`: every loop of the disassembly (a backward branch), with its own instructions (nested
  loops excluded), its draw-tests per iteration and its memory operations;
- `hot_loop`: the loop that runs the draw-tests (one draw-test = one generator output of one
  seed at one skip compared with one residue). Draw-tests per iteration are counted in the SASS
  itself: a compare that reduces mod m in place shows one `IMAD q, -m, v` per draw-test; the
  affine families' divisibility test one `IMAD k, v, o^-1, nr` (m = 2^z * o, o odd); a
  compare against buffered outputs (generate-once families) one shared-memory load (LDS) each;
- `sass_per_draw_test`: hot-loop instructions / draw-tests per iteration; for generate-once
  families also `gen_sass_per_output` (the loop that writes outputs to the buffer: instructions
  per output), `outputs_per_draw_test` (generated outputs / draw-tests of the job, from its
  parameters) and `sass_per_draw_test_total` = compare + generate x outputs per draw-test.

`--rev REV` analyses the launcher of an older commit (`git show REV:workers/.../gpu.py`), so the
"before" table in docs/benchmarks.md stays reproducible.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
GPU_PY = "workers/prng_workers/backends/gpu.py"
# the workload of the issue's table: k = 512, skips 0..20, m = 1000 (+ mt19937's exact 10-draw window)
CONFIGS = {
    "default": dict(m=1000, offset=0, k=512, skip_min=0, skip_max=20),
    "exact10": dict(m=1000, offset=0, k=10, skip_min=0, skip_max=0),
}


class ToolsMissing(RuntimeError):
    """NVRTC or nvdisasm is not installed (the reason is the message)."""


@dataclass(frozen=True)
class Tools:
    nvrtc: Path
    nvdisasm: Path


def find_tools() -> Tools:
    """libnvrtc and nvdisasm from the NVIDIA wheels (`nvidia` namespace package); nvdisasm also from PATH."""
    try:
        import nvidia  # type: ignore[import-not-found]

        roots = [Path(p) for p in nvidia.__path__]
    except ImportError:
        roots = []
    nvrtc = next(
        (p for r in roots for p in sorted(r.glob("*/lib/libnvrtc.so*")) if "builtins" not in p.name), None
    )
    disasm = next((p for r in roots for p in sorted(r.glob("*/bin/nvdisasm"))), None)
    if disasm is None and shutil.which("nvdisasm"):
        disasm = Path(shutil.which("nvdisasm"))  # type: ignore[arg-type]
    missing = [
        name
        for name, p in (("nvidia-cuda-nvrtc (libnvrtc)", nvrtc), ("nvidia-cuda-nvdisasm (nvdisasm)", disasm))
        if p is None
    ]
    if missing:
        raise ToolsMissing(
            "not installed: " + ", ".join(missing) + " (make setup installs them, see requirements.txt)"
        )
    return Tools(nvrtc, disasm)  # type: ignore[arg-type]


def nvrtc_compile(
    tools: Tools, source: str, options: tuple[str, ...], arch: str = "sm_90"
) -> tuple[bytes, str]:
    """Compile with libnvrtc to a cubin for `arch`; returns (cubin, compiler log). Fails with the log."""
    lib = ctypes.CDLL(str(tools.nvrtc))
    prog = ctypes.c_void_p()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"prng_sieve.cu", 0, None, None) != 0:
        raise RuntimeError("nvrtcCreateProgram failed")
    try:
        opts = [f"-arch={arch}".encode(), b"--ptxas-options=-v", *(o.encode() for o in options)]
        rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        text = log.value.decode(errors="replace")
        if rc != 0:
            raise RuntimeError(f"NVRTC failed ({rc}): {text}")
        lib.nvrtcGetCUBINSize(prog, ctypes.byref(size))
        cubin = ctypes.create_string_buffer(size.value)
        if lib.nvrtcGetCUBIN(prog, cubin) != 0:
            raise RuntimeError("nvrtcGetCUBIN failed")
        return cubin.raw, text
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def ptxas_usage(log: str) -> dict[str, int]:
    """Registers, stack frame (local memory) and spill bytes from ptxas' -v report."""

    def num(pattern: str) -> int:
        m = re.search(pattern, log)
        if m is None:
            raise RuntimeError(f"ptxas report lacks {pattern!r}: {log}")
        return int(m.group(1))

    return {
        "regs": num(r"Used (\d+) registers"),
        "local_bytes": num(r"(\d+) bytes stack frame"),
        "spill_stores": num(r"(\d+) bytes spill stores"),
        "spill_loads": num(r"(\d+) bytes spill loads"),
    }


INSTR = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
LABEL = re.compile(r"^(\.L_x_\d+):")
TARGET = re.compile(r"`\((\.L_x_\d+)\)")


def disassemble(tools: Tools, cubin: bytes) -> list[tuple[int, str]]:
    """(address, instruction text) of the kernel, in order; labels resolved to addresses."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        text = subprocess.run(
            [str(tools.nvdisasm), "-c", str(path)], capture_output=True, text=True, check=True, timeout=120
        ).stdout
    out: list[tuple[int, str]] = []
    labels: dict[str, int] = {}
    pending: list[str] = []
    for line in text.splitlines():
        lab = LABEL.match(line.strip())
        if lab:
            pending.append(lab.group(1))
            continue
        ins = INSTR.match(line)
        if ins:
            addr = int(ins.group(1), 16)
            for name in pending:
                labels[name] = addr
            pending = []
            out.append((addr, ins.group(2)))
    return [(a, TARGET.sub(lambda m: f"`({labels.get(m.group(1), -1)})", t)) for a, t in out]


def opcode(text: str) -> str:
    t = re.sub(r"^@!?U?P\w+\s+", "", text)
    return t.split()[0] if t else ""


def div_inverse_immediates(m: int) -> tuple[str, ...]:
    """How nvdisasm writes o^-1 mod 2^32 (m = 2^z * o, o odd) as an IMAD immediate, either
    sign: the affine kernels test v mod m == r as one multiply-add v * o^-1 + nr per draw-test
    (the residue's own multiply by -o^-1 has RZ as its addend and is not counted)."""
    if m >= 1 << 32:
        return ()
    odd = m >> ((m & -m).bit_length() - 1)
    inv = pow(odd, -1, 1 << 32)
    return (f"0x{inv:x}", f"-0x{(1 << 32) - inv:x}")


def find_loops(instrs: list[tuple[int, str]], m: int) -> list[dict]:
    """Every backward branch is a loop [target, branch]. Per loop: own instructions (those not
    inside a nested loop), draw-test markers and memory operations among them."""
    spans = []
    for a, t in instrs:
        if opcode(t) == "BRA":
            tg = re.search(r"`\((-?\d+)\)", t)
            if tg and 0 <= int(tg.group(1)) <= a:
                spans.append((int(tg.group(1)), a))
    spans = sorted(set(spans))
    mod_imm = f"-0x{m:x}"
    inv_imms = div_inverse_immediates(m)
    loops = []
    for s, e in spans:
        nested = [(s2, e2) for s2, e2 in spans if (s2, e2) != (s, e) and s <= s2 and e2 <= e]
        own = [(a, t) for a, t in instrs if s <= a <= e and not any(s2 <= a <= e2 for s2, e2 in nested)]
        ops = [opcode(t) for _, t in own]

        def count(prefix: str, ops: list[str] = ops) -> int:
            return sum(1 for o in ops if o.split(".")[0] == prefix)

        loops.append(
            {
                "start": f"0x{s:04x}",
                "end": f"0x{e:04x}",
                "instructions": len(own),
                "nested_loops": len(nested),
                "mod_ops": sum(
                    1
                    for _, t in own
                    if opcode(t).startswith("IMAD") and re.search(rf"(?<![0-9a-fx]){re.escape(mod_imm)}\b", t)
                ),
                "div_ops": sum(
                    1
                    for _, t in own
                    if opcode(t) == "IMAD"
                    and not t.rstrip().endswith("RZ")
                    and any(re.search(rf"(?<![0-9a-fx]){re.escape(i)}\b", t) for i in inv_imms)
                ),
                "lds": count("LDS"),
                "sts": count("STS"),
                "ldg": count("LDG"),
                "ldc": count("LDC"),
                "ldl": count("LDL"),
                "stl": count("STL"),
                "stg": count("STG"),
                "atom": count("ATOMG") + count("RED"),
                "imad": sum(1 for o in ops if o.startswith("IMAD")),
            }
        )
    return loops


# H100 SXM-class part (H200: the same SMs and clock), per SM and clock: 4 schedulers issue one
# warp instruction each (128 lane-instructions); 32-bit integer multiply-add 64 lanes (the
# FMA-heavy half), other 32-bit integer ops 64 lanes (CUDA C++ Programming Guide, arithmetic
# instruction throughput, compute capability 9.0). Memory and branch instructions count only
# against issue. An upper bound from the instruction mix, not a measurement.
ROOFLINE = {
    "sms": 132,
    "clock_hz": 1.98e9,
    "issue_per_clk_sm": 128,
    "imad_per_clk_sm": 64,
    "int_alu_per_clk_sm": 64,
}


def roofline(row: dict, hot: dict | None, gen: list[dict], outputs_per_test: float) -> float | None:
    """Draw-tests/s that the instruction mix of the draw-test (and generate) loop allows."""
    if hot is None:
        return None

    def mix(lp: dict, per: float) -> tuple[float, float, float]:
        mem = lp["lds"] + lp["sts"] + lp["ldg"] + lp["ldc"] + lp["ldl"] + lp["stl"] + lp["stg"]
        other = lp["instructions"] - lp["imad"] - mem - 1  # - the branch
        return lp["instructions"] / per, lp["imad"] / per, other / per

    total, imad, other = mix(hot, hot["draw_tests"])
    if gen:
        g = max(gen, key=lambda lp: lp["sts"])
        gt, gi, go = mix(g, g["mod_ops"] / outputs_per_test)
        total, imad, other = total + gt, imad + gi, other + go
    r = ROOFLINE
    per_clk_sm = min(
        r["issue_per_clk_sm"] / total,
        r["imad_per_clk_sm"] / max(imad, 1e-9),
        r["int_alu_per_clk_sm"] / max(other, 1e-9),
    )
    return float(f"{per_clk_sm * r['sms'] * r['clock_hz']:.3g}")


def analyse(
    tools: Tools,
    family: str,
    source: str,
    options: tuple[str, ...],
    m: int,
    p_span: int,
    draw_tests: int,
    arch: str = "sm_90",
    sass_dir: Path | None = None,
    tag: str = "",
) -> dict:
    """One family's figures (see the module docstring). p_span / draw_tests = generated outputs
    per draw-test of a generate-once kernel."""
    cubin, log = nvrtc_compile(tools, source, options, arch)
    usage = ptxas_usage(log)
    instrs = disassemble(tools, cubin)
    if sass_dir is not None:
        sass_dir.mkdir(parents=True, exist_ok=True)
        (sass_dir / f"{family}{tag}.sass").write_text("\n".join(f"/*{a:04x}*/ {t}" for a, t in instrs) + "\n")
    loops = find_loops(instrs, m)
    # the compare loop: markers are LDS (buffered outputs) or in-place mod reductions; the
    # innermost such loop (fewest own instructions per marker) is where the draw-tests run
    compare = [lp for lp in loops if lp["sts"] == 0 and (lp["lds"] or lp["mod_ops"] or lp["div_ops"])]
    for lp in compare:
        lp["draw_tests"] = lp["lds"] or lp["mod_ops"] or lp["div_ops"]
    hot = min(compare, key=lambda lp: lp["instructions"] / lp["draw_tests"], default=None)
    gen = [lp for lp in loops if lp["sts"] and lp["mod_ops"]]
    row: dict = {
        "family": family,
        "arch": arch,
        **usage,
        "sass_instructions": len(instrs),
        "hot_loop": hot,
        "hot_loop_local_ops": (hot["ldl"] + hot["stl"]) if hot else None,
    }
    if hot is None:  # fully unrolled (no draw-test loop): the whole kernel per seed
        mods = sum(1 for _, t in instrs if opcode(t).startswith("IMAD") and f"-0x{m:x}" in t)
        row["sass_per_draw_test"] = round(len(instrs) / draw_tests, 2)
        row["note"] = f"no draw-test loop: straight-line code per seed ({mods} outputs reduced mod m)"
    else:
        row["sass_per_draw_test"] = round(hot["instructions"] / hot["draw_tests"], 2)
    if gen:
        g = max(gen, key=lambda lp: lp["sts"])
        row["gen_sass_per_output"] = round(g["instructions"] / g["mod_ops"], 2)
        row["outputs_per_draw_test"] = round(p_span / draw_tests, 3)
        row["sass_per_draw_test_total"] = round(
            row["sass_per_draw_test"] + row["gen_sass_per_output"] * p_span / draw_tests, 2
        )
    row["roofline_draw_tests_per_s"] = roofline(row, hot, gen, p_span / draw_tests)
    row["loops"] = loops
    return row


def load_launcher(rev: str | None) -> types.ModuleType:
    """The launcher module: this checkout's, or the one of git commit `rev` (read-only)."""
    if rev is None:
        from prng_workers.backends import gpu

        return gpu
    text = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:{GPU_PY}"], capture_output=True, text=True, check=True
    ).stdout
    spec = importlib.util.spec_from_loader(f"gpu_at_{rev}", loader=None)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[mod.__name__] = mod  # dataclasses look their module up while the class is made
    exec(compile(text, f"{rev}:{GPU_PY}", "exec"), mod.__dict__)
    return mod


def family_build(mod: types.ModuleType, family: str, cfg: dict) -> tuple[str, tuple[str, ...]]:
    """(source, options) exactly as the launcher builds them for this job."""
    from prng_workers.sieve import SieveJob

    r = np.random.default_rng(0).integers(0, cfg["m"], cfg["k"])
    job = SieveJob(family, r, cfg["m"], cfg["offset"], cfg["skip_min"], cfg["skip_max"], 0.01, 0, 1 << 24)
    if hasattr(mod, "build_kernel"):
        b = mod.build_kernel(job)
        return b.source, b.options
    return mod.KERNEL_SOURCE, tuple(
        mod.kernel_options(family, cfg["m"], cfg["offset"], cfg["k"], cfg["skip_max"])
    )


def cases(families: list[str], m: int | None = None) -> list[tuple[str, str, dict]]:
    out = []
    for fam in families:
        out.append((fam, "default", CONFIGS["default"]))
        if fam == "mt19937":
            out.append((fam, "exact10", CONFIGS["exact10"]))
    return [(f, n, cfg if m is None else {**cfg, "m": m}) for f, n, cfg in out]


def run(
    families: list[str],
    rev: str | None = None,
    arch: str = "sm_90",
    sass_dir: Path | None = None,
    m: int | None = None,
) -> list[dict]:
    tools = find_tools()
    mod = load_launcher(rev)
    rows = []
    for fam, name, cfg in cases(families, m):
        source, options = family_build(mod, fam, cfg)
        n_skips = cfg["skip_max"] - cfg["skip_min"] + 1
        p_span = cfg["offset"] + cfg["k"] * (cfg["skip_max"] + 1) - (cfg["offset"] + cfg["skip_min"])
        row = analyse(
            tools,
            fam,
            source,
            options,
            cfg["m"],
            p_span,
            cfg["k"] * n_skips,
            arch,
            sass_dir,
            "" if name == "default" else f".{name}",
        )
        rows.append({"case": name, **cfg, "rev": rev or "worktree", **row})
    return rows


def main() -> int:
    from prng_workers.families import FAMILY_NAMES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=list(FAMILY_NAMES))
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--rev", help="analyse the launcher of this git commit instead of the work tree")
    ap.add_argument("--sass-dir", type=Path, help="also write each kernel's disassembly here")
    ap.add_argument("--mod", type=int, help="m for every case instead of 1000 (e.g. an odd m)")
    ap.add_argument("--table", action="store_true", help="print a Markdown table after the JSON lines")
    args = ap.parse_args()
    try:
        rows = run(args.families, args.rev, args.arch, args.sass_dir, args.mod)
    except ToolsMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for row in rows:
        print(json.dumps(row), flush=True)
    if args.table:
        print(
            "\n| family | case | regs | local B | spills B | hot loop instr | draw-tests/iter "
            "| SASS/draw-test | gen SASS/output | outputs/draw-test | SASS/draw-test total "
            "| roofline draw-tests/s |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            h = r["hot_loop"] or {}
            print(
                f"| {r['family']} | {r['case']} | {r['regs']} | {r['local_bytes']} | "
                f"{r['spill_stores'] + r['spill_loads']} | {h.get('instructions', '-')} | "
                f"{h.get('draw_tests', '-')} | {r['sass_per_draw_test']} | "
                f"{r.get('gen_sass_per_output', '-')} | "
                f"{r.get('outputs_per_draw_test', '-')} | {r.get('sass_per_draw_test_total', '-')} | "
                f"{r['roofline_draw_tests_per_s'] or 0:.3g} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
