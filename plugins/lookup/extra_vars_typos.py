# Copyright: the PRNG cluster team; MIT License (see LICENSE)
from __future__ import annotations

DOCUMENTATION = r"""
name: extra_vars_typos
version_added: "0.1.0"
short_description: The -e names of this run that look like a misspelt variable of the collection
description:
  - Ansible ignores an extra variable nobody reads, so C(-e treshold=0.02) runs with the default
    threshold and finishes "green" with other results than asked for, and
    C(-e ramdisk_clear_stp=step1) clears every step. This lookup reads the run's C(-e) names (as
    Ansible parsed them) and returns one line for each name that none of the collection's
    playbooks, roles, inventories or plugins uses but that is close to one that does (difflib
    ratio >= 0.8).
  - Names starting with C(ansible_) and names not close to any of the collection's are left
    alone (they may be meant for another play or for Ansible itself).
author:
  - PRNG cluster team (@prng-cluster)
options: {}
"""

EXAMPLES = r"""
- name: Refuse a misspelt -e name before anything starts
  ansible.builtin.fail:
    msg: "{{ typos | first }}"
  vars:
    typos: "{{ lookup('prng.cluster.extra_vars_typos', wantlist=True) }}"
  when: typos | length > 0
"""

RETURN = r"""
_raw:
  description: One line per misspelt name, naming the closest known one; empty when none.
  type: list
  elements: str
"""

import difflib  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402

from ansible.plugins.lookup import LookupBase  # noqa: E402
from ansible.utils.vars import load_extra_vars  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
QUOTED = re.compile(r"[\"']([A-Za-z_][A-Za-z0-9_]*)[\"']")


def vocabulary(root=ROOT):
    """What a -e name can mean: every name-like word of the collection's playbooks, roles
    (argument specs included) and inventories, and every quoted name in its plugins (the host
    variables the fan-out reads, e.g. fanout_input_dir)."""
    names = set()
    for sub in ("playbooks", "roles", "inventory", "plugins"):
        for dirpath, _dirs, files in os.walk(os.path.join(root, sub)):
            for name in files:
                yaml = name.endswith((".yml", ".yaml"))
                pattern = WORD if yaml else QUOTED if name.endswith(".py") else None
                if pattern:
                    with open(os.path.join(dirpath, name), encoding="utf-8") as fh:
                        names.update(pattern.findall(fh.read()))
    return names


def typos(given, known):
    """One line for each given name that is unknown but close to a known one."""
    out = []
    for name in sorted(given):
        if name in known or name.startswith("ansible_"):
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        if close:
            out.append(
                f"-e {name}: this collection reads no variable of that name, did you mean "
                f"{close[0]}? (nothing was started)"
            )
    return out


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        try:
            given = load_extra_vars(self._loader)
        except Exception:  # no command line (e.g. called from ansible-runner's API): nothing to check
            return []
        return typos(list(given), vocabulary()) if given else []
