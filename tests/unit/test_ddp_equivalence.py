"""DDP as ray_train wraps it: one DMN step on 2 gloo processes x batch b gives the gradients of one
process x batch 2b (torch.distributed directly; Ray Train sets up the same process group)."""

from __future__ import annotations

import torch
import torch.multiprocessing as mp

from maskgan import labels
from maskgan.training import checkpoint, dmn, ray_train

HALF = 2  # per-process batch b; the reference step sees 2b
# float32 sums in another order (two half-batch means averaged by all-reduce vs one mean): ~1e-7
# relative; 1e-4 still catches a missing all-reduce (gradients of half the batch differ by O(1)).
RTOL, ATOL = 1e-4, 1e-6


def make_batch(size: int, resolution: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1234)
    label = torch.randint(0, labels.NUM_CLASSES, (size, resolution, resolution), generator=generator)
    image = torch.rand(size, 3, resolution, resolution, generator=generator) * 2 - 1
    return {"image": image, "label": label, "onehot": labels.one_hot(label), "id": torch.arange(size)}


def stage_config():
    return dmn.dmn_tiny()  # style_swap_prob 0: no per-rank randomness in a step


def gradients(stage) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{key}": param.grad.detach().clone()
        for name, net in stage.trained_networks().items()
        for key, param in net.named_parameters()
        if param.grad is not None
    }


def _worker(rank: int, world_size: int, init_file: str, out_file: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        config = stage_config()
        stage = dmn.build(config, "cpu", rank=rank)
        stage.wrap(lambda module: ray_train.wrap_for_ddp(module, torch.device("cpu"), world_size))
        batch = make_batch(HALF * world_size, config.generator.resolution)
        stage.step({key: value[rank * HALF : (rank + 1) * HALF] for key, value in batch.items()}, 1)
        if rank == 0:
            checkpoint.save_torch_file(gradients(stage), out_file)
    finally:
        dist.destroy_process_group()


def test_two_workers_at_batch_b_equal_one_worker_at_batch_2b(tmp_path):
    out_file = str(tmp_path / "ddp_grads.pt")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), out_file), nprocs=2, join=True)
    distributed = checkpoint.load_torch_file(out_file, weights_only=True)

    config = stage_config()
    single = dmn.build(config, "cpu", rank=0)
    single.step(make_batch(2 * HALF, config.generator.resolution), 1)
    reference = gradients(single)

    assert distributed.keys() == reference.keys() and len(reference) > 10
    for key, value in reference.items():
        torch.testing.assert_close(distributed[key], value, rtol=RTOL, atol=ATOL, msg=key)
