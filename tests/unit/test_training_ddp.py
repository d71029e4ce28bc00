"""Every stage steps under real DDP (gloo, one process): one forward per wrapped network per step, no
reduction left pending, D gets no gradient from G's loss, and the wrapped steps equal unwrapped ones."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
from mask_vae_fixtures import one_thread
from torch.nn.parallel import DistributedDataParallel
from training_inputs import batches

from maskgan.training import dmn, ebst, mask_vae


@pytest.fixture
def process_group():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize(
    "build", [lambda: mask_vae.build(mask_vae.mask_vae_tiny(), "cpu"),
              lambda: dmn.build(dmn.dmn_tiny(), "cpu"), lambda: ebst.build(ebst.ebst_tiny(), "cpu")],
    ids=["maskvae", "dmn", "ebst"],
)  # fmt: skip
def test_wrapped_steps_equal_plain_steps(process_group, build):
    wrapped, plain = build(), build()
    wrapped.wrap(lambda network: DistributedDataParallel(network))
    assert all(
        isinstance(wrapped.runner(name), DistributedDataParallel) for name in wrapped.trained_networks()
    )
    with one_thread():
        for step, batch in enumerate(batches(3, batch_size=2), start=1):
            got, want = wrapped.step(batch, step), plain.step(batch, step)
    assert got.keys() == want.keys()
    for name in got:
        assert got[name] == pytest.approx(want[name], rel=1e-4, abs=1e-6), name
    for name, network in plain.trained_networks().items():
        other = wrapped.trained_networks()[name].state_dict()
        for key, value in network.state_dict().items():
            torch.testing.assert_close(other[key], value, rtol=1e-4, atol=1e-5, msg=f"{name}.{key}")
