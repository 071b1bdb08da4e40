"""Test-cluster harness: real SSH hosts as network namespaces (see docs/testcluster.md)."""

from __future__ import annotations

from .harness import Cluster, ClusterError, Host, HostSpec, missing_requirements, reap_stale

__all__ = ["Cluster", "ClusterError", "Host", "HostSpec", "missing_requirements", "reap_stale"]
