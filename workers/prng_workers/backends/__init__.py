"""Sieve backends beside the NumPy reference path (`prng_workers.sieve.numpy_sieve_range`):
`cpu` (Numba, parallel over seeds) and `gpu` (CuPy RawKernel, one source for CUDA and HIP).
`prng_workers.sieve` imports them lazily, so a worker that never runs on the GPU never
imports CuPy (and i7: CuPy kernels compile before torch is ever imported).

Each returns, for the seeds of a range, the best match count (int32) and its smallest skip
(int32); `prng_workers.sieve.run_sieve` turns those into survivors.
"""
