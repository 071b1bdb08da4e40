"""Step 3 scoring: every survivor seed scored against the draw history, in batches.

- `features`: the feature definitions and the batched NumPy implementation (seeds x draws).
- `reference`: the same features one seed at a time in plain Python (the correctness oracle).
- `torch_backend`: the batched implementation in torch (CPU or one bound GPU), imported lazily.
- `engine`: sub-batching of a chunk in bounded memory, draws from `prng_workers.families`.
- CLIs: `cli` (`prng-score`), `aggregate`, `globals_cli`, `memory_model`.
"""
