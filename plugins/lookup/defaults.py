# Copyright: the PRNG cluster team; MIT License (see LICENSE)
from __future__ import annotations

DOCUMENTATION = r"""
name: defaults
version_added: "0.1.0"
short_description: The collection's default places, from its one definition
description:
  - Returns the default of each named variable as C(plugins/module_utils/defaults.py) defines it
    (the same module the modules and the fan-out import), so role defaults read it instead of
    repeating the value.
author:
  - PRNG cluster team (@prng-cluster)
options:
  _terms:
    description:
      - Variable names - C(prng_home), C(prng_ramdisk_root), C(prng_cache), C(worker_venv),
        C(worker_bin), C(worker_env_file), C(dispatch_root), C(state_dir), C(stage_dir).
    type: list
    elements: str
    required: true
"""

EXAMPLES = r"""
- name: The ramdisk root when the inventory sets none
  ansible.builtin.debug:
    msg: "{{ ramdisk_root | default(lookup('prng.cluster.defaults', 'prng_ramdisk_root')) }}"
"""

RETURN = r"""
_raw:
  description: The default of each term, in order.
  type: list
  elements: str
"""

from ansible.errors import AnsibleLookupError  # noqa: E402
from ansible.plugins.lookup import LookupBase  # noqa: E402
from ansible_collections.prng.cluster.plugins.module_utils.defaults import DEFAULTS  # noqa: E402


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        out = []
        for term in terms:
            if term not in DEFAULTS:
                raise AnsibleLookupError(
                    f"prng.cluster.defaults: unknown name {term!r}, expected one of {', '.join(DEFAULTS)}"
                )
            out.append(DEFAULTS[term])
        return out
