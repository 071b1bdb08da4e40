"""Sieve backends: `numpy` (reference), `cpu` (Numba, parallel over seeds), `gpu` (CuPy
RawKernel, one source for CUDA and HIP). Each is imported lazily by `prng_workers.sieve`
(i7: CuPy kernels compile before torch is ever imported in a worker process).

Every backend implements `sieve_range(job) -> (best_matches int32[n], best_skip int32[n])`
for the seeds job.seed_start .. job.seed_end - 1.
"""
