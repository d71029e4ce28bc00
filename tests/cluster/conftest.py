"""Real local Ray clusters (`ray start` raylets on 127.0.0.1) and `ray job submit` helpers."""

from __future__ import annotations

import pytest

from tests.cluster.jobs import Jobs
from tests.cluster.ray_cluster import LocalRayCluster


@pytest.fixture
def make_cluster(aws_env):
    """Start clusters on demand; each is stopped at teardown (its own processes only, checked)."""
    clusters: list[LocalRayCluster] = []

    def make(**kwargs) -> LocalRayCluster:
        cluster = LocalRayCluster(**kwargs)
        clusters.append(cluster)
        return cluster

    yield make
    errors = []
    for cluster in clusters:
        try:
            cluster.shutdown()
        except RuntimeError as error:
            errors.append(str(error))
    assert not errors, errors


@pytest.fixture
def cluster(make_cluster) -> LocalRayCluster:
    """One head node with 2 CPUs (dashboard + job server on 127.0.0.1)."""
    head = make_cluster()
    head.start_head(num_cpus=2)
    return head


@pytest.fixture
def jobs(cluster) -> Jobs:
    return Jobs(cluster)
