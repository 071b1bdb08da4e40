#!/usr/bin/python
# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
from __future__ import annotations

DOCUMENTATION = r"""
module: ramdisk
short_description: Preload, verify, clear and report a pipeline step's files in a host's ramdisk
version_added: 0.1.0
description:
  - Keeps copies of a step's input files in C(<root>/<step>/) on each host (default root
    C(/dev/shm/prng)), so concurrent workers read them from RAM.
  - O(state=preload) sends the files from the controller, once per host, and copies only
    files that are missing or whose content differs (SHA-256). Each copy is verified by
    size and hash on the host (hashed while it is received, over ssh and local
    connections), then renamed into place. The sentinel, a manifest of
    names, sizes and hashes (C(.manifest.json)), is written last; while an update is in
    progress and after any failure there is no sentinel, so a step is never "ready" with
    missing or partial files.
  - Before copying, a preflight reads the real mount holding the root. It warns when the
    mount would be more than O(warn_percent) used after loading, and refuses (nothing
    copied) above O(max_percent), or when the files would not fit in the free space.
  - O(state=clear) removes one step folder, or every step folder under the root, each
    whole (dotfiles included). Paths are resolved first; the root may not be empty,
    relative, V(/) or a system folder, and a step may not resolve outside the root.
  - Deletes only what is ours. O(state=clear), and the removal of other steps by an
    O(exclusive) preload, refuse a root whose real path (symlinks resolved) is not on a
    tmpfs or ramfs mount, and remove only step folders that carry this module's manifest
    (C(.manifest.json), or C(.manifest.prev.json) while a preload is unfinished) naming
    that step. Anything else under the root (foreign files and folders, dotfiles,
    symlinks) is left alone and listed in RV(foreign). O(allow_any_root) and
    O(remove_foreign) override this.
  - O(state=status) lists the steps, their files and sizes, whether each is valid,
    stale (differs from O(files) on the controller), damaged, incomplete or absent, the
    runs using each, and the ramdisk's used and total size.
  - In use. A preload with O(run_id) takes that run's lease on the step folder
    (C(.lease-<run_id>.json)), live for O(lease_seconds) after it was last taken or
    renewed (re-running the preload, O(state=lease), or touching the file renews it), so
    after a controller crash it ends by itself. While another run holds a live lease on a
    step, a clear of it, an O(exclusive) preload that would remove it, and a preload that
    would change its files refuse, name that run, and remove nothing. O(state=release)
    gives a run's lease back and, with O(clear_unused), removes the step when no other run
    uses it (the end-of-step policy).
  - Two preloads of one step on one host do not mix. The first holds a claim
    (C(.loading.json)) from its check to its commit, and the second waits for it (up to
    O(lock_timeout)) and then finds the step loaded. A claim whose preload died (its
    process is gone on this controller, or nothing moved for 2 minutes) is taken over.
    Each host-side phase runs under C(flock) on C(<root>/.prng-lock), a file that exists
    only while a phase runs.
  - The controller side (hashing the sources with a size/mtime cache and sending the
    files) is this module's action plugin, so the module is always used through it.
author:
  - PRNG cluster team (@prng-cluster)
options:
  state:
    description:
      - V(preload) loads O(files) for O(step); V(clear) removes O(step) or every step;
        V(status) reports; V(lease) takes or renews the lease of O(run_id) on the loaded
        O(step); V(release) gives it back (and removes the step with O(clear_unused)).
    type: str
    choices: [preload, clear, status, lease, release]
    default: status
  root:
    description:
      - Root folder of the ramdisk copies. Must be absolute, not a system folder; symlinks
        are resolved.
    type: path
    default: /dev/shm/prng
    aliases: [ramdisk_root]
  step:
    description:
      - Name of the step folder under O(root), for example V(step3). A plain name (no
        C(/), not starting with C(.)).
      - Required for O(state=preload). For O(state=clear) and O(state=status), omitted or
        empty means all steps.
    type: str
  files:
    description:
      - Source files on the controller to preload (or, with O(state=status), to compare
        the loaded copies with, to detect stale data). Each lands under its base name;
        base names must be unique.
    type: list
    elements: path
  exclusive:
    description:
      - With O(state=preload), first remove every other step under O(root), so only this
        step's data is held (the standalone lifecycle policy).
    type: bool
    default: false
  allow_any_root:
    description:
      - Let O(state=clear) and an O(exclusive) preload delete under a root that is not on a
        tmpfs or ramfs mount (a disk folder). Off by default, so a mistyped or symlinked
        root never empties a disk folder.
    type: bool
    default: false
  remove_foreign:
    description:
      - Let O(state=clear) and an O(exclusive) preload remove every entry under the root
        (a link as a link), not only step folders carrying this module's manifest.
    type: bool
    default: false
  warn_percent:
    description: Warn when the ramdisk mount would be more than this percentage used after the preload.
    type: float
    default: 50
  max_percent:
    description: Refuse to preload when the ramdisk mount would be more than this percentage used.
    type: float
    default: 80
  verify:
    description:
      - How files already on the host are checked. V(quick) trusts a manifest record whose
        size and modification time still match; V(full) re-reads and hashes every file.
        New copies are always hashed.
    type: str
    choices: [quick, full]
    default: quick
  run_id:
    description:
      - The run that uses the step (letters, digits, C(.), C(_), C(-); at most 80). A preload
        with it takes the run's lease on the step; a clear with it ignores that run's own
        lease. Empty (default) - no lease is taken, and leases of every run count.
    type: str
    default: ""
  lease_seconds:
    description:
      - How long a lease lives after it was taken or last renewed. Longer than the step's
        longest stretch without a renewal; after a controller crash the step stays
        protected this long.
    type: float
    default: 21600
  lock_timeout:
    description:
      - Seconds a preload waits for another preload of the same step on the host, and any
        operation for the host's ramdisk lock, before it fails.
    type: float
    default: 900
  clear_unused:
    description:
      - With O(state=release), remove the step when no other run holds a live lease on it
        (only step folders of ours, on a tmpfs/ramfs root, as O(state=clear)).
    type: bool
    default: false
  _manifest:
    description: Internal, set by the action plugin. Names, sizes and SHA-256 of O(files).
    type: list
    elements: dict
  _phase:
    description: Internal, set by the action plugin. Which half of a preload to run.
    type: str
    choices: [prepare, commit, abort]
    default: prepare
  _staged:
    description: Internal, set by the action plugin. File name to the path its copy was sent to.
    type: dict
  _load_id:
    description: Internal, set by the action plugin. Identifies this preload's claim on the step.
    type: str
  _holder:
    description: Internal, set by the action plugin. The controller process behind the claim or lease.
    type: str
    default: ""
  _break_claim:
    description: Internal, set by the action plugin. A claim whose preload process is gone, to take over.
    type: str
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.flow
attributes:
  action:
    support: full
  async:
    support: none
  bypass_host_loop:
    support: none
  check_mode:
    support: full
    details: Reports what would be copied, purged or removed; nothing is sent or changed.
  diff_mode:
    support: full
    details: The step's manifest before and after (preload), or the removed paths (clear).
  platform:
    platforms: posix
notes:
  - Concurrent preloads of the same step on the same host take turns (see the description).
  - The controller caches source hashes by path, size, mtime and inode in
    C(~/.cache/prng-cluster/hashes) (override with E(PRNG_HASH_CACHE)); a changed file is re-hashed.
seealso:
  - name: Ramdisk role and playbooks
    description: docs/ramdisk.md in the collection.
    link: https://example.invalid/prng-cluster/docs/ramdisk.md
"""

EXAMPLES = r"""
- name: Load Step 3 inputs into each host's ramdisk (clearing other steps first)
  prng.cluster.ramdisk:
    state: preload
    step: step3
    files:
      - runs/demo/train_history.json
      - runs/demo/holdout_history.json
    exclusive: true

- name: Is the loaded copy still the same as the sources?
  prng.cluster.ramdisk:
    state: status
    step: step3
    files: [runs/demo/train_history.json, runs/demo/holdout_history.json]
  register: ramdisk

- name: Remove one step (refused, naming the run, while a run holds a lease on it)
  prng.cluster.ramdisk:
    state: clear
    step: step3

- name: Load step 3 for run 20240610-1402-ab12cd and hold it while that run goes on
  prng.cluster.ramdisk:
    state: preload
    step: step3
    files: [runs/demo/train_history.json, runs/demo/holdout_history.json]
    run_id: 20240610-1402-ab12cd
    lease_seconds: 43200

- name: End of that run - give the lease back, remove the step if no other run uses it
  prng.cluster.ramdisk:
    state: release
    step: step3
    run_id: 20240610-1402-ab12cd
    clear_unused: true

- name: Remove every step under a custom root (foreign entries there are kept and listed)
  prng.cluster.ramdisk:
    state: clear
    root: /dev/shm/prng-test
  register: cleared

- name: Empty a scratch folder on disk completely (both overrides; rarely what you want)
  prng.cluster.ramdisk:
    state: clear
    root: /scratch/prng-copies
    allow_any_root: true
    remove_foreign: true

# Ad hoc:
#   ansible gpu_nodes -m prng.cluster.ramdisk -a 'state=status'
#   ansible gpu_nodes -m prng.cluster.ramdisk -a 'state=preload step=step3 files=a.json,b.json'
"""

RETURN = r"""
step_path:
  description: The step folder on the host (preload, status with O(step)).
  returned: when a step is given
  type: str
  sample: /dev/shm/prng/step3
copied:
  description: Files sent and installed by this preload (would be, in check mode).
  returned: state=preload
  type: list
  elements: str
  sample: [train_history.json]
removed:
  description: Paths removed (other steps purged, extra or partial files, cleared steps).
  returned: state=preload or state=clear
  type: list
  elements: str
  sample: [/dev/shm/prng/step2]
foreign:
  description:
    - Entries under the root that a clear or an O(exclusive) preload left alone because they
      are not step folders carrying this module's manifest (see O(remove_foreign)).
  returned: state=clear or state=preload
  type: list
  elements: str
  sample: [/dev/shm/prng/.ready_step3, /dev/shm/prng/notes]
manifest:
  description: The sentinel manifest written by the preload.
  returned: state=preload and not in check mode
  type: dict
  sample: {"version": 1, "step": "step3", "total_bytes": 35000,
           "files": [{"name": "train_history.json", "size": 28000, "sha256": "9f86d0...", "mtime_ns": 1}]}
files:
  description: Host path of each loaded file, by name.
  returned: state=preload
  type: dict
  sample: {"train_history.json": /dev/shm/prng/step3/train_history.json}
steps:
  description:
    - Per step, its files, bytes, and state (V(valid), V(stale), V(damaged),
      V(incomplete), V(absent)) with the problems found.
  returned: state=status
  type: list
  elements: dict
  sample: [{"step": "step3", "path": "/dev/shm/prng/step3", "state": "valid", "bytes": 35000,
            "files": [{"name": "train_history.json", "size": 28000, "in_manifest": true}], "problems": []}]
shm:
  description: The real mount holding the root, its size and use.
  returned: always
  type: dict
  sample: {"mount": "/dev/shm", "fstype": "tmpfs", "size_bytes": 4294967296, "used_bytes": 536870912,
           "avail_bytes": 3758096384, "used_percent": 12.5}
summary:
  description:
    - One line saying what happened. Status - for tables, e.g. from playbooks/ramdisk_status.yml.
      Clear and release - the steps removed, the bytes freed and the mount's use after. Preload -
      what was sent.
  returned: always
  type: str
  sample: "removed step3 (7.1 MiB), step1 (2.0 MiB): 9.1 MiB freed; /dev/shm now 0.0/64.0 MiB used (0.0%)"
rows:
  description: Table rows (step, files, MiB, state, shm used/size) for playbooks/ramdisk_status.yml.
  returned: state=status
  type: list
  elements: str
  sample: ["step3            2         0.0  valid      0.0/64.0 MiB (0.1%)"]
timing:
  description:
    - Seconds spent per phase of a preload (controller hashing, host prepare, transfer and
      commit) and how it ran (C(via)). V(session) - one session per host with a receiver that
      prepares, hashes each copy while writing it and commits (ssh and local connections, no
      become). V(module) - this module's prepare phase, the connection's file copy, then its
      commit phase, which hashes every copy again.
  returned: state=preload
  type: dict
  sample: {"hash_s": 0.66, "prepare_s": 0.2, "transfer_s": 6.1, "via": "session"}
complete:
  description: Preload found the step already loaded and verified; nothing to do.
  returned: state=preload
  type: bool
  sample: true
freed_bytes:
  description: Bytes the removed steps held.
  returned: state=clear, state=release
  type: int
  sample: 7444889
lease:
  description:
    - The lease taken or renewed for O(run_id); C(path) is its file, which the step's
      fan-out agent touches while the step runs so that a long run keeps its lease.
  returned: state=preload or state=lease, with O(run_id)
  type: dict
  sample: {"run_id": "20240610-1402-ab12cd", "step": "step3", "holder": "ctl pid 4121",
           "taken": "2024-06-10T14:02:11Z", "lease_seconds": 21600, "expires": "2024-06-10T20:02:11Z",
           "renewed": false, "path": "/dev/shm/prng/step3/.lease-20240610-1402-ab12cd.json"}
released:
  description: Whether O(run_id)'s lease was there and is given back.
  returned: state=release
  type: bool
  sample: true
kept:
  description: Why O(clear_unused) kept the step (other runs still use it).
  returned: state=release, when the step is kept
  type: str
  sample: "step step3 is in use by run 20240610-1502-ffee01 (lease until 2024-06-10T21:02:11Z)"
busy:
  description: Internal, for the action plugin - the claim of another preload of the step, still running.
  returned: state=preload, while another preload of the step runs
  type: dict
"""

import os  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.prng.cluster.plugins.module_utils.defaults import PRNG_RAMDISK_ROOT  # noqa: E402
from ansible_collections.prng.cluster.plugins.module_utils.ramdisk import (  # noqa: E402
    MANIFEST,
    RamdiskError,
    RootLock,
    abort_preload,
    check_run_id,
    clear_summary,
    commit_locked,
    do_clear,
    drop_claim,
    in_use_text,
    leases,
    plan_clear,
    preload_prepare,
    release_lease,
    resolve_root,
    shm_info,
    status,
    step_dir,
    take_lease,
)


def _preload(module: AnsibleModule) -> dict:
    p = module.params
    if p["_phase"] == "abort":
        root_real = resolve_root(p["root"])
        with RootLock(root_real, p["lock_timeout"]):
            gone = abort_preload(
                p["root"], p["step"], [os.path.basename(v) for v in (p["_staged"] or {}).values()]
            )
            drop_claim(step_dir(root_real, p["step"]), p["_load_id"])
        return {"changed": bool(gone), "removed": gone}
    if p["_phase"] == "commit":  # after a copy by the connection's put_file (hosts the stream cannot reach)
        return commit_locked(
            p["root"],
            p["step"],
            p["_load_id"],
            p["_manifest"],
            p["_staged"] or {},
            p["verify"],
            p["lock_timeout"],
        )
    res = preload_prepare(p, module.check_mode, module._diff)
    for warning in res.pop("warnings", []):
        module.warn(warning)
    return res


def _clear_result(module: AnsibleModule, plan: dict) -> dict:
    paths = [t["path"] for t in plan["targets"]]
    res = {
        "changed": bool(paths),
        "removed": paths,
        "foreign": plan["foreign"],
        "freed_bytes": sum(t["bytes"] for t in plan["targets"]),
    }
    if not plan["exists"]:
        res["msg"] = f"ramdisk root {plan['root']} does not exist: nothing to clear"
    if plan["foreign"]:
        module.warn(
            "left alone (not a step folder of ours; remove_foreign=true removes it): {}".format(
                ", ".join(plan["foreign"])
            )
        )
    if module._diff:
        res["diff"] = {"before": "".join(p + "\n" for p in paths), "after": ""}
    if paths and not module.check_mode:
        do_clear(plan)
    res["shm"] = shm_info(plan["root"])
    res["summary"] = clear_summary(plan["targets"], res["shm"], module.check_mode)
    return res


def _clear(module: AnsibleModule) -> dict:
    p = module.params
    run_id = check_run_id(p["run_id"])
    args = (p["root"], p["step"] or None, p["allow_any_root"], p["remove_foreign"], run_id)
    root_real = resolve_root(p["root"])
    if module.check_mode or not os.path.isdir(root_real):
        return _clear_result(module, plan_clear(*args))
    plan_clear(*args)  # refusals (root on disk) before the lock file is made
    with RootLock(root_real, p["lock_timeout"]):
        return _clear_result(module, plan_clear(*args))


def _lease(module: AnsibleModule) -> dict:
    p = module.params
    run_id = check_run_id(p["run_id"])
    if not p["step"] or not run_id:
        raise RamdiskError(f"state={p['state']} needs a step and a run_id")
    root_real = resolve_root(p["root"])
    sdir = step_dir(root_real, p["step"])
    if p["state"] == "lease":
        if not os.path.isfile(os.path.join(sdir, MANIFEST)):
            raise RamdiskError(f"step {p['step']} is not loaded under {root_real}: preload it (with run_id)")
        if module.check_mode:
            return {"changed": False}
        with RootLock(root_real, p["lock_timeout"]):
            lease = take_lease(sdir, p["step"], run_id, p["lease_seconds"], p["_holder"])
        return {"changed": not lease["renewed"], "lease": lease, "step_path": sdir}
    if not os.path.isdir(sdir):
        summary = f"step {p['step']} is not loaded here: no lease of run {run_id} to give back"
        return {"changed": False, "released": False, "removed": [], "freed_bytes": 0, "summary": summary}
    res = {"released": any(le["run_id"] == run_id for le in leases(sdir)), "removed": [], "freed_bytes": 0}
    if module.check_mode:
        return dict(res, changed=res["released"])
    with RootLock(root_real, p["lock_timeout"]):
        release_lease(sdir, run_id)
        others = [le for le in leases(sdir) if le["live"]]
        if p["clear_unused"] and others:
            res["kept"] = in_use_text(p["step"], others)
            res["summary"] = f"kept {p['step']}: {res['kept']}"
            module.warn(f"kept {sdir}: {res['kept']}")
        elif p["clear_unused"]:
            plan = plan_clear(p["root"], p["step"], p["allow_any_root"], p["remove_foreign"], run_id)
            res.update(_clear_result(module, plan))
    res["changed"] = res["released"] or bool(res["removed"])
    if "summary" not in res:
        res["summary"] = "lease of run {} {}".format(run_id, "given back" if res["released"] else "not held")
    elif res["released"]:
        res["summary"] = f"lease of run {run_id} given back; " + res["summary"]
    return res


def _status(module: AnsibleModule) -> dict:
    p = module.params
    res = status(p["root"], p["step"] or None, p["_manifest"], p["verify"])
    if p["step"]:
        res["step_path"] = os.path.join(res["root"], p["step"])
    res["changed"] = False
    return res


# Also the action plugin's: it validates a preload with it before the receiver session.
ARGUMENT_SPEC = dict(
    state=dict(type="str", choices=["preload", "clear", "status", "lease", "release"], default="status"),
    root=dict(type="path", default=PRNG_RAMDISK_ROOT, aliases=["ramdisk_root"]),
    step=dict(type="str"),
    files=dict(type="list", elements="path"),
    exclusive=dict(type="bool", default=False),
    allow_any_root=dict(type="bool", default=False),
    remove_foreign=dict(type="bool", default=False),
    warn_percent=dict(type="float", default=50),
    max_percent=dict(type="float", default=80),
    verify=dict(type="str", choices=["quick", "full"], default="quick"),
    _manifest=dict(type="list", elements="dict"),
    _phase=dict(type="str", choices=["prepare", "commit", "abort"], default="prepare"),
    _staged=dict(type="dict"),
    _load_id=dict(type="str"),
    _holder=dict(type="str", default=""),
    _break_claim=dict(type="str"),
    run_id=dict(type="str", default=""),
    lease_seconds=dict(type="float", default=21600.0),
    lock_timeout=dict(type="float", default=900.0),
    clear_unused=dict(type="bool", default=False),
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        supports_check_mode=True,
    )
    # An empty root must be refused, not replaced by a default: check the raw value.
    if module.params["root"] is None or not str(module.params["root"]).strip():
        module.fail_json(msg="refusing: the ramdisk root is empty")
    try:
        resolve_root(module.params["root"])
        handler = {
            "preload": _preload,
            "clear": _clear,
            "status": _status,
            "lease": _lease,
            "release": _lease,
        }[module.params["state"]]
        result = handler(module)
    except RamdiskError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg=f"ramdisk {module.params['state']} failed: {exc}")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
