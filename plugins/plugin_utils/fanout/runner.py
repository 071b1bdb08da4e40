# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""Starting a play in the background through ansible-runner (run_play), with the same
ansible.cfg, collections and Python as the playbook that called the fan-out."""

from __future__ import annotations

import os
import shutil
import sys
import threading
from typing import Any, Callable, Dict, List, Tuple

import yaml


class _Dumper(yaml.SafeDumper):
    pass


# Values from the inventory arrive as Ansible's tagged str/int/float subclasses.
_Dumper.add_multi_representer(str, lambda dumper, value: dumper.represent_str(str(value)))
_Dumper.add_multi_representer(int, lambda dumper, value: dumper.represent_int(int(value)))
_Dumper.add_multi_representer(float, lambda dumper, value: dumper.represent_float(float(value)))


def dump_yaml(path: str, data: Any) -> None:
    with open(path, "w") as fh:
        yaml.dump(data, fh, Dumper=_Dumper, default_flow_style=False, sort_keys=False, width=1 << 20)


def runner_envvars(config_file: str | None, collections_paths: List[str]) -> Dict[str, str]:
    """Environment of the runner's ansible-playbook: the same ansible.cfg, collections
    and Python as the playbook that called the fan-out."""
    env = {
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
        "ANSIBLE_COLLECTIONS_PATH": os.pathsep.join(collections_paths),
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_GATHERING": "explicit",
    }
    if config_file:
        env["ANSIBLE_CONFIG"] = config_file
    return env


def run_play(
    pdir: str,
    hosts: List[str],
    tasks: List[Dict[str, Any]],
    inventory: List[str],
    envvars: Dict[str, str],
    on_event: Callable[[Dict[str, Any]], None],
    cancel: threading.Event,
    keep_artifacts: bool = False,
) -> Tuple[threading.Thread, Any]:
    """Run `tasks` on `hosts` (names of the inventory's hosts) in one ansible-playbook,
    all hosts at once, in the background. The hosts are put into a group of their own in
    an extra inventory source, so no host name is ever parsed as a pattern. `on_event`
    sees every runner event (nothing of the event stream is kept on disk); `cancel` stops
    the run. Returns the runner's thread and its Runner; `pdir` is removed when it ends
    well."""
    import ansible_runner  # controller-only dependency

    os.makedirs(os.path.join(pdir, "project"), exist_ok=True)
    group = os.path.join(pdir, "hosts.yml")
    dump_yaml(group, {"fanout_play": {"hosts": {name: None for name in hosts}}})
    play = [{"name": "fan-out", "hosts": "fanout_play", "gather_facts": False, "tasks": tasks}]
    dump_yaml(os.path.join(pdir, "project", "play.yml"), play)

    def handler(event: Dict[str, Any]) -> bool:
        on_event(event)
        return False

    def finished(runner: Any) -> None:
        if runner.rc == 0 and not keep_artifacts:
            shutil.rmtree(pdir, ignore_errors=True)

    return ansible_runner.run_async(
        private_data_dir=pdir,
        playbook="play.yml",
        inventory=[*inventory, group],
        limit="fanout_play",
        envvars=envvars,
        forks=len(hosts) + 1,
        quiet=True,
        event_handler=handler,
        finished_callback=finished,
        cancel_callback=cancel.is_set,
        settings={"suppress_ansible_output": True},
        ident="run",
    )
