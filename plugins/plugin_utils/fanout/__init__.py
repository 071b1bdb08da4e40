# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""Controller side of the fan-out: plan jobs, pull them through free GPU slots over
ansible-runner, validate and pull outputs, journal every state so a run resumes.

Modules: contract (inputs, parameters, settings, host variables checked before anything
starts), planner (HostSpec, the base Plan), plans (each step's jobs), sizing (memory model,
slots, chunk size, stored throughput, the --check preview), eligible (which hosts get slots,
and why the others do not), shards (one step over several controllers), journal (durable job
states), jobindex (jobs by state; the queue), hosts (a host's slots, rate, losses),
scheduler (the loop: free slots pull batches), outcomes (what a result does: done, split,
retry, stop, requeue), dispatcher (one batch message and its result), transport (one task
and one SSH session per host, fed over a local socket), runner (run_play over
ansible-runner), progress (display + JSON file), manifest (the run's record). The messages and the
host agent are in module_utils (fanout_protocol, fanout_agent, job_runner).
"""
