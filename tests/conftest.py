"""Shared pytest fixtures. The test cluster (real SSH hosts in network namespaces) lives in
tests/cluster/; see docs/testcluster.md."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.cluster import Cluster, missing_requirements


@pytest.fixture
def make_cluster() -> Iterator[Callable[..., Cluster]]:
    """Factory: ``make_cluster(3, shm_mb=64)`` or ``make_cluster([HostSpec(...), ...])``
    starts a test cluster; every cluster it made is torn down when the test ends, pass or
    fail. Skips with the reason when this machine cannot run one (not root, no sshd/ip)."""
    problem = missing_requirements()
    if problem:
        pytest.skip(f"test cluster unavailable: {problem}")
    made: list[Cluster] = []

    def factory(hosts: Any = 3, **kwargs: Any) -> Cluster:
        cluster = Cluster(hosts, **kwargs)
        made.append(cluster)
        return cluster.start()

    try:
        yield factory
    finally:
        for cluster in reversed(made):
            cluster.stop()


@pytest.fixture
def cluster3(make_cluster: Callable[..., Cluster]) -> Cluster:
    """Three test hosts with 64 MiB /dev/shm each."""
    return make_cluster(3, shm_mb=64)
