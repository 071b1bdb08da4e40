# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""Controller side of the fan-out: plan jobs, pull them through free GPU slots over
ansible-runner, validate and pull outputs, journal every state so a run resumes.

Modules: journal (durable job states), planner (jobs, chunk size, slots), scheduler
(free slots pull work, retries, splits, host failures), dispatcher (one ansible-runner
run per dispatch), progress (display + JSON file), manifest (the run's record).
"""
