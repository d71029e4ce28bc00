"""run_loop and the Stage machinery, on the tiny MaskVAE stage with in-memory batches (no data files)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from mask_vae_fixtures import face_masks, one_thread

from maskgan.labels import one_hot
from maskgan.training import mask_vae
from maskgan.training.loop import (
    InjectedFailure,
    LoopHooks,
    NonFiniteLossError,
    run_loop,
    step_generator,
)
from maskgan.training.optim import ExponentialMovingAverage, LinearDecay, OptimizerConfig


def batches(num: int, batch_size: int = 4, seed: int = 0):
    """num in-memory batches in the loader layout (images are unused by the MaskVAE: zeros)."""
    for index in range(num):
        label = face_masks(batch_size, size=32, seed=seed + index)
        yield {"label": label, "onehot": one_hot(label), "image": torch.zeros(batch_size, 3, 32, 32),
               "id": torch.arange(batch_size)}  # fmt: skip


def tiny_config(**loop):
    config = mask_vae.mask_vae_tiny()
    return dataclasses.replace(config, loop=dataclasses.replace(config.loop, **loop))


def test_hooks_fire_on_their_cadence_and_at_the_end():
    config = tiny_config(max_steps=7, batch_size=4, log_every=3, image_every=5, checkpoint_every=4,
                         val_every=2, val_batches=1)  # fmt: skip
    stage = mask_vae.build(config, "cpu")
    calls = {"metrics": [], "val": [], "images": [], "checkpoint": []}

    def on_metrics(step, metrics):
        calls["val" if any(k.startswith("val/") for k in metrics) else "metrics"].append((step, metrics))

    hooks = LoopHooks(
        on_metrics=on_metrics,
        on_images=lambda step, columns: calls["images"].append((step, columns)),
        on_checkpoint=lambda step: calls["checkpoint"].append(step),
    )
    with one_thread():
        result = run_loop(stage, batches(7), loop=config.loop, start_step=0, hooks=hooks,
                          val_batches=lambda: batches(1, seed=100))  # fmt: skip
    assert [step for step, _ in calls["metrics"]] == [3, 6, 7]
    assert [step for step, _ in calls["val"]] == [2, 4, 6, 7]
    assert [step for step, _ in calls["images"]] == [5, 7]
    assert calls["checkpoint"] == [4, 7]
    metrics = calls["metrics"][-1][1]
    assert {"loss/total", "loss/cross_entropy", "loss/kl", "lr/mask_vae", "images_per_s"} <= set(metrics)
    assert 0.0 <= metrics["data_wait_fraction"] <= 1.0 and metrics["images_per_s"] > 0
    assert set(calls["images"][0][1]) == {"mask", "reconstruction", "edit_1", "edit_2"}
    assert result.last_step == 7 and result.steps_run == 7 and "val/pixel_accuracy" in result.val_metrics


def test_nan_loss_stops_the_run_naming_step_and_loss_before_its_checkpoint():
    config = tiny_config(max_steps=6, batch_size=4, checkpoint_every=1)
    stage = mask_vae.build(config, "cpu")
    checkpoints = []

    def on_checkpoint(step):
        checkpoints.append(step)
        if step == 2:  # poison a weight: the loss of step 3 is NaN
            with torch.no_grad():
                stage.mask_vae.to_mu.weight[0, 0] = float("nan")

    with one_thread(), pytest.raises(NonFiniteLossError, match=r"non-finite loss/.* at step 3") as caught:
        run_loop(
            stage, batches(6), loop=config.loop, start_step=0, hooks=LoopHooks(on_checkpoint=on_checkpoint)
        )
    assert caught.value.step == 3 and caught.value.name.startswith("loss/")
    assert not math.isfinite(caught.value.value)
    assert checkpoints == [1, 2], "no checkpoint may be written for the broken step"


def test_injected_failure_fires_once_on_fresh_runs_only():
    config = tiny_config(max_steps=4, batch_size=2, fail_at_step=3)
    stage = mask_vae.build(config, "cpu")
    seen = []
    hooks = LoopHooks(on_checkpoint=seen.append)
    with one_thread():
        with pytest.raises(InjectedFailure, match="step 3"):
            run_loop(stage, batches(4, 2), loop=dataclasses.replace(config.loop, checkpoint_every=1),
                     start_step=0, hooks=hooks)  # fmt: skip
        assert seen == [1, 2]
        # A resumed run (start_step > 0) goes through step 3.
        result = run_loop(stage, batches(2, 2), loop=config.loop, start_step=2, hooks=hooks)
    assert result.last_step == 4 and seen == [1, 2, 4]


def test_iterator_running_out_is_an_error_naming_the_step():
    config = tiny_config(max_steps=5, batch_size=2)
    with one_thread(), pytest.raises(ValueError, match="ran out before step 3"):
        run_loop(mask_vae.build(config, "cpu"), batches(2, 2), loop=config.loop, start_step=0)


def test_state_dict_round_trip_resumes_bit_for_bit():
    """Stage A: 4 steps. Stage B: 2 steps, state saved, loaded into a fresh stage C, 2 more: C == A."""
    config = tiny_config(max_steps=4, batch_size=4, grad_clip=1.0)
    data = list(batches(4))
    with one_thread():
        a = mask_vae.build(config, "cpu")
        metrics_a = [a.step(batch, step) for step, batch in enumerate(data, start=1)]
        b = mask_vae.build(config, "cpu")
        for step, batch in enumerate(data[:2], start=1):
            b.step(batch, step)
        c = mask_vae.build(dataclasses.replace(config, loop=dataclasses.replace(config.loop, seed=0)), "cpu")
        c.load_state_dict(b.state_dict())
        metrics_c = [c.step(batch, step) for step, batch in enumerate(data[2:], start=3)]
    assert metrics_c == metrics_a[2:]
    for key, value in a.mask_vae.state_dict().items():
        assert torch.equal(value, c.mask_vae.state_dict()[key]), key
    with pytest.raises(ValueError, match="missing entries"):
        c.load_state_dict({"stage": "maskvae"})
    with pytest.raises(ValueError, match="stage 'dmn'"):
        c.load_state_dict({"stage": "dmn"})


def test_step_randomness_depends_on_seed_rank_and_step_only():
    def draw(*key):
        return torch.rand(3, generator=step_generator(*key))

    assert torch.equal(draw(0, 0, 5), draw(0, 0, 5))
    assert not torch.equal(draw(0, 0, 5), draw(0, 0, 6))
    assert not torch.equal(draw(0, 0, 5), draw(0, 1, 5))
    assert not torch.equal(draw(0, 0, 5), draw(1, 0, 5))


def test_constant_then_linear_decay_schedule():
    decay = LinearDecay(constant_steps=10, decay_steps=5)
    assert [decay(step) for step in (0, 9, 10, 11, 14, 15, 20)] == [1, 1, 1, 0.8, pytest.approx(0.2), 0, 0]
    assert LinearDecay(0, 0)(10**6) == 1.0
    config = dataclasses.replace(
        tiny_config(max_steps=4, batch_size=2),
        optimizer=OptimizerConfig(lr=1e-3, betas=(0.9, 0.999), constant_steps=2, decay_steps=2),
    )
    stage = mask_vae.build(config, "cpu")
    with one_thread():
        lrs = [stage.step(batch, step)["lr/mask_vae"] for step, batch in enumerate(batches(4, 2), start=1)]
    # the logged lr is the one the step used: 1e-3, 1e-3, then decaying
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4])


def test_ema_follows_the_live_weights():
    live = torch.nn.Linear(2, 2)
    ema = ExponentialMovingAverage(live, decay=0.9)
    before = ema.module.weight.clone()
    with torch.no_grad():
        live.weight.add_(1.0)
    ema.update(live)
    assert torch.allclose(ema.module.weight, 0.9 * before + 0.1 * live.weight)
    assert not any(p.requires_grad for p in ema.module.parameters())


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [("max_steps", 0, "loop.max_steps"), ("precision", "fp8", "loop.precision"),
     ("grad_clip", -1.0, "loop.grad_clip"), ("fail_at_step", 10**6, "loop.fail_at_step")],
)  # fmt: skip
def test_loop_config_errors_name_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(tiny_config().loop, **{field: value})
