"""A study joins an existing Ray cluster (``[study.ray] address``) of two nodes and gives the serial numbers.

The cluster is Ray's own multi-node test harness (``ray.cluster_utils.Cluster``): a head node and a worker node,
separate raylets on this machine, no network beyond localhost. The study does not start or stop it.
"""

from __future__ import annotations

import sys

import pytest
from test_distill_bag import _check_bag, _run


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("this process is already connected to a Ray instance")
    from ray.cluster_utils import Cluster

    ray.cloudpickle.register_pickle_by_value(sys.modules["test_distill_bag"])
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    yield c
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()


def test_a_study_on_an_existing_two_node_cluster_gives_the_serial_numbers(cluster, tmp_path, monkeypatch):
    import ray
    import test_distill_bag
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as in every task, so that reductions add in the same order
    try:
        serial, _ = _run(tmp_path, "serial")
        joined = test_distill_bag.SPEC.replace(
            "[data]", f'[study.ray]\naddress = "{cluster.address}"\nmax_retries = 1\n\n[data]')
        monkeypatch.setattr(test_distill_bag, "SPEC", joined)
        _check_bag(tmp_path, "ray", serial)  # the distilled sets, MTT's experts and the evaluate seeds as tasks
    finally:
        torch.set_num_threads(before)
    # the study joined the cluster (a local instance it had started would have been shut down) and left it running
    assert ray.is_initialized() and len([n for n in ray.nodes() if n["Alive"]]) == 2
    assert ray.cluster_resources()["CPU"] == 2
