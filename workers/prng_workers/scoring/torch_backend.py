"""The batched Step 3 features in torch (CPU build or one bound CUDA/ROCm GPU).

Same columns and definitions as `features` (see its docstring); float64 throughout, so
NumPy and torch agree to ~1e-9 relative (tests use rtol 1e-7). Imported only when the
torch backend is chosen (i7: backends import lazily).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from prng_workers.errors import InputError
from prng_workers.scoring.features import COL as _COL
from prng_workers.scoring.features import (
    CONFIDENCE_FLOOR,
    HCOL,
    HOLDOUT_FEATURES,
    KL_EPS,
    MODS,
    N_LAGS,
    N_WINDOWS,
    TRAIN_FEATURES,
    History,
    expected_popcount,
    window_starts,
)


def resolve_device(device: str) -> torch.device:
    """The torch device for `device` (cpu, cuda, cuda:N); fails loudly if the GPU is absent (i2)."""
    dev = torch.device(device)
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise InputError(f"unsupported torch device {device!r} (use cpu, cuda or cuda:N)")
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        raise InputError(f"asked for GPU device {device!r} but torch sees no GPU "
                         "(check CUDA_VISIBLE_DEVICES / HIP_VISIBLE_DEVICES and the driver)")
    index = dev.index if dev.index is not None else 0
    if index >= torch.cuda.device_count():
        raise InputError(f"asked for {device!r} but only {torch.cuda.device_count()} GPU(s) are visible")
    return torch.device("cuda", index)


def device_name(dev: torch.device) -> str:
    return "cpu" if dev.type == "cpu" else torch.cuda.get_device_name(dev)


@dataclass(frozen=True)
class TorchHistory:
    h: History
    a: torch.Tensor  # [n] int64
    centered: torch.Tensor  # [n] float64
    log_q: dict[int, torch.Tensor]
    residues: dict[int, torch.Tensor]
    digits: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    popcount_lut: torch.Tensor | None


def to_torch(h: History, dev: torch.device) -> TorchHistory:
    def t(arr: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(arr)).to(dev)

    lut = None
    if h.m <= 2**22:
        lut = t(np.bitwise_count(np.arange(h.m, dtype=np.int64)).astype(np.int64))
    return TorchHistory(
        h=h, a=t(h.a.astype(np.int64)), centered=t(h.centered),
        log_q={mod: t(np.log(h.mod_probs[mod])) for mod in MODS},
        residues={mod: t(h.residues[mod].astype(np.int64)) for mod in MODS},
        digits=tuple(t(d.astype(np.int64)) for d in h.digits),  # type: ignore[arg-type]
        popcount_lut=lut,
    )


def _rate(mask: torch.Tensor) -> torch.Tensor:
    return mask.sum(dim=1, dtype=torch.float64) / mask.shape[1]


def _popcount(p: torch.Tensor, lut: torch.Tensor | None) -> torch.Tensor:
    if lut is not None:
        return lut[p if p.dtype in (torch.int32, torch.int64) else p.int()]  # int16 draws index as int32
    v = p.to(torch.int64, copy=True)  # SWAR popcount for large moduli
    v = v - ((v >> 1) & 0x5555555555555555)
    v = (v & 0x3333333333333333) + ((v >> 2) & 0x3333333333333333)
    v = (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0F
    return (v * 0x0101010101010101) >> 56


def _hist(p: torch.Tensor, mod: int) -> torch.Tensor:
    b = p.shape[0]
    idx = (p % mod) + (torch.arange(b, device=p.device, dtype=torch.int64) * mod)[:, None]
    return torch.bincount(idx.reshape(-1), minlength=b * mod).reshape(b, mod).to(torch.float64)


def _kl_coh(counts: torch.Tensor, n: int, log_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pc = torch.clamp(counts / n, min=KL_EPS)
    kl = (pc * (torch.log(pc) - log_q)).sum(dim=1)
    return kl, 1.0 / (1.0 + kl)


def train_features(p: torch.Tensor, th: TorchHistory) -> torch.Tensor:
    """p [B, n] int16/int32/int64 on the device -> [B, len(TRAIN_FEATURES)] float64 on the device."""
    h = th.h
    b, n = p.shape
    out = torch.empty((b, len(TRAIN_FEATURES)), dtype=torch.float64, device=p.device)

    def put(name: str, value: torch.Tensor | float) -> None:
        out[:, _COL[name]] = value

    eq = p == th.a
    rate = _rate(eq)
    put("score", 100.0 * rate)
    put("exact_matches", eq.sum(dim=1, dtype=torch.float64))
    put("total_predictions", float(n))
    put("confidence", torch.clamp(rate, min=CONFIDENCE_FLOOR))
    w, starts = window_starts(n)
    win = torch.stack([_rate(eq[:, s:s + w]) for s in starts], dim=1)
    del eq
    put("temporal_mean", win.mean(dim=1))
    put("temporal_std", win.std(dim=1, correction=0))
    put("temporal_min", win.min(dim=1).values)
    put("temporal_max", win.max(dim=1).values)
    ks = torch.arange(N_WINDOWS, dtype=torch.float64, device=p.device) - (N_WINDOWS - 1) / 2
    put("temporal_slope", win @ ks / float(ks @ ks))

    pmean = p.sum(dim=1).to(torch.float64) / n
    x = p.to(torch.float64) - pmean[:, None]
    ss = (x * x).sum(dim=1)
    var_p = ss / n
    put("pred_mean", pmean)
    put("pred_std", torch.sqrt(var_p))
    put("pred_min", p.min(dim=1).values.to(torch.float64))
    put("pred_max", p.max(dim=1).values.to(torch.float64))
    put("actual_mean", h.mean)
    put("actual_std", h.std)
    put("residual_mean", pmean - h.mean)
    absr = (p - th.a).abs()
    put("residual_abs_mean", absr.sum(dim=1).to(torch.float64) / n)
    put("residual_max_abs", absr.max(dim=1).values.to(torch.float64))
    s1 = p.sum(dim=1) - int(h.a.sum(dtype=np.int64))
    sq = absr if h.m <= 2**14 else absr.to(torch.float64)
    s2 = (sq * sq).sum(dim=1)
    del absr, sq
    put("residual_std", torch.sqrt(torch.clamp((n * s2 - s1 * s1).to(torch.float64) / float(n * n), min=0.0)))

    lane8 = _rate((p % 8) == th.residues[8])
    lane125 = _rate((p % 125) == th.residues[125])
    put("lane_agreement_8", lane8)
    put("lane_agreement_125", lane125)
    put("lane_consistency", (lane8 + lane125) / 2.0)
    hundreds = _rate(((p // 100) % 10) == th.digits[0])
    tens = _rate(((p // 10) % 10) == th.digits[1])
    ones = _rate((p % 10) == th.digits[2])
    put("digit_hundreds_agreement", hundreds)
    put("digit_tens_agreement", tens)
    put("digit_ones_agreement", ones)
    put("digit_agreement_sum", hundreds + tens + ones)

    for mod in MODS:
        if mod >= h.m:
            match = rate
        elif mod == 8:
            match = lane8
        elif mod == 125:
            match = lane125
        else:
            match = _rate((p % mod) == th.residues[mod])
        kl, coh = _kl_coh(_hist(p, mod), n, th.log_q[mod])
        put(f"residue_{mod}_match_rate", match)
        put(f"residue_{mod}_kl_divergence", kl)
        put(f"residue_{mod}_coherence", coh)

    has_var = ss > 0
    safe_ss = torch.where(has_var, ss, torch.ones_like(ss))
    spec = torch.fft.rfft(x, dim=1).abs()[:, 1:]
    put("fft_peak_magnitude", spec.max(dim=1).values / n if spec.shape[1] else 0.0)
    del spec
    zero = torch.zeros_like(ss)
    for k in range(1, N_LAGS + 1):
        ac = (x[:, :-k] * x[:, k:]).sum(dim=1) / safe_ss if k < n else zero
        put(f"autocorr_lag_{k}", torch.where(has_var, ac, zero))
    cs = torch.cumsum(x, dim=1).abs_()
    del x
    norm = torch.sqrt(safe_ss)
    put("cusum_max", torch.where(has_var, cs.max(dim=1).values / norm, zero))
    put("cusum_mean_excursion", torch.where(has_var, cs.mean(dim=1) / norm, zero))
    del cs
    pop = _popcount(p, th.popcount_lut).sum(dim=1).to(torch.float64) / n
    put("popcount_bias", pop - expected_popcount(h.m))
    return out


def holdout_features(ph: torch.Tensor, th: TorchHistory) -> torch.Tensor:
    b, nh = ph.shape
    out = torch.empty((b, len(HOLDOUT_FEATURES)), dtype=torch.float64, device=ph.device)
    hits = _rate(ph == th.a)
    lanes = (_rate((ph % 8) == th.residues[8]) + _rate((ph % 125) == th.residues[125])) / 2.0
    coh = torch.stack([_kl_coh(_hist(ph, mod), nh, th.log_q[mod])[1] for mod in MODS]).mean(dim=0)
    out[:, HCOL["holdout_hits"]] = hits
    out[:, HCOL["holdout_lane_consistency"]] = lanes
    out[:, HCOL["holdout_coherence"]] = coh
    out[:, HCOL["holdout_quality"]] = (hits + lanes + coh) / 3.0
    return out
