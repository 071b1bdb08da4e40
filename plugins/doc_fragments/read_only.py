# Copyright: PRNG cluster team
# MIT License (see LICENSE)

from __future__ import annotations


class ModuleDocFragment:
    """The attributes of a module that only reads a host's state."""

    DOCUMENTATION = r"""
attributes:
  check_mode:
    support: full
    description: Reads only; runs the same in check mode.
  diff_mode:
    support: none
    description: Nothing is changed, so there is nothing to compare.
"""

    # A read-only module that also sets facts.
    FACTS = r"""
attributes:
  facts:
    support: full
    description: The result is also returned as a fact (see RV(ansible_facts)).
"""
