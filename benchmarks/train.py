"""Training throughput per stage, as ratios to a baseline measured in the same run.

CPU (default): each stage through the real Ray Train path (Ray Data ingest, DDP on gloo, checkpoint
at the end; MLflow off) with 1 and then 2 workers, at the tiny and the base (256-px preset) widths,
on a synthetic dataset preprocessed to --resolution px. Prints images/s in total, the scaling
efficiency (2-worker total / (2 x 1-worker total)) and the data-wait fraction of step time (goal < 5 %).
Numbers come from run_loop's own metrics over the second half of the steps (the first half warms up).

CUDA (--device cuda): single process (no Ray, no MLflow: the GPU machine may have neither), the
official_512 presets on random batches: images/s per GPU in fp32 and bf16 autocast (ratio to fp32)
and the achieved TFLOP/s (FLOPs of one step counted with torch.utils.flop_counter).

  python benchmarks/train.py                          # CPU, a few minutes on 2 cores
  python benchmarks/train.py --stages dmn --widths tiny --steps 20
  python benchmarks/train.py --device cuda            # GPU: official_512, fp32 vs bf16

The random-VGG fallback stands in for VGG19 weights (same compute). Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from typing import Any

import torch

from maskgan import config as config_lib
from maskgan.labels import NUM_CLASSES, one_hot

STAGES = ("maskvae", "dmn", "ebst")
PRESET = {  # (stage, width) -> (module, preset)
    ("maskvae", "tiny"): ("mask_vae", "mask_vae_tiny"),
    ("maskvae", "base"): ("mask_vae", "mask_vae_base_256"),
    ("maskvae", "official"): ("mask_vae", "mask_vae_official_512"),
    ("dmn", "tiny"): ("dmn", "dmn_tiny"),
    ("dmn", "base"): ("dmn", "dmn_base_256"),
    ("dmn", "official"): ("dmn", "dmn_official_512"),
    ("ebst", "tiny"): ("ebst", "ebst_tiny"),
    ("ebst", "base"): ("ebst", "ebst_base_256"),
    ("ebst", "official"): ("ebst", "ebst_official_512"),
}


def stage_config(stage: str, width: str, *, resolution: int | None, batch_size: int | None, loop: dict):
    """A preset resized to `resolution` px, with a random VGG where the preset wants real weights."""
    import importlib

    module_name, preset = PRESET[(stage, width)]
    module = importlib.import_module(f"maskgan.training.{module_name}")
    config = module.PRESETS[preset]()
    updates: dict[str, Any] = {"loop": dict(loop)}
    if batch_size:
        updates["loop"]["batch_size"] = batch_size
    if resolution:
        if stage == "maskvae":
            updates["model"] = {"image_size": resolution}
        else:
            updates["generator"] = {"resolution": resolution}
        if stage == "ebst":
            updates["mask_vae"] = {"image_size": resolution}
    if (
        hasattr(config, "perceptual")
        and config.perceptual.fallback == "error"
        and config.perceptual.weights is None
    ):
        updates["perceptual"] = {"fallback": "random"}
    return config_lib.merge(config, updates)


# ---------------------------------------------------------------------------------------------- CPU


def ensure_dataset(workdir: str, num_images: int, resolution: int) -> str:
    """Synthetic CelebAMask-HQ preprocessed to `resolution` px (reused when already there)."""
    from maskgan.data import synthetic
    from maskgan.data.celebamask import DecodeConfig
    from maskgan.data.preprocess import PreprocessConfig, run

    raw, out = (
        os.path.join(workdir, f"raw-{num_images}"),
        os.path.join(workdir, f"parquet-{num_images}-{resolution}"),
    )
    if not os.path.exists(os.path.join(raw, synthetic.MAPPING_FILE)):
        synthetic.write_dataset(
            synthetic.SyntheticConfig(num_images=num_images, image_size=2 * resolution, mask_size=resolution),
            raw,
            progress=False,
        )
    decode = DecodeConfig(resolution=resolution, mask_size=resolution)
    run(PreprocessConfig(source_uri=raw, output_uri=out, decode=decode, batch_size=8, progress=False))
    return out


def cpu_benchmark(args: argparse.Namespace) -> None:
    import ray

    from maskgan.tracking import TrackingConfig
    from maskgan.training import ray_train

    if not ray.is_initialized():
        ray.init(log_to_driver=False, include_dashboard=False)
    workdir = args.workdir or tempfile.mkdtemp(prefix="maskgan-bench-")
    data_uri = ensure_dataset(workdir, args.num_images, args.resolution)
    half = max(1, args.steps // 2)
    loop = {"max_steps": 2 * half, "log_every": half, "image_every": 10**6, "checkpoint_every": 10**6,
            "val_every": 10**6, "val_batches": 0}  # fmt: skip
    upstream: dict[str, str] = {}
    print(f"CPU, {os.cpu_count()} cores, {args.resolution} px data, {2 * half} steps per run "
          f"(second {half} timed), MLflow off")  # fmt: skip
    print(f"{'stage':<8} {'width':<6} {'batch':>5} {'workers':>7} {'img/s total':>12} {'efficiency':>10} "
          f"{'data wait':>9}")  # fmt: skip
    for width in args.widths:
        for stage in args.stages:
            config = stage_config(
                stage, width, resolution=args.resolution, batch_size=args.batch_size, loop=loop
            )
            config = config_lib.merge(config, {"data": {"uri": data_uri}})
            if stage == "ebst":
                upstream_uris = {"dmn_checkpoint": upstream.get(f"dmn-{width}"),
                                 "mask_vae_checkpoint": upstream.get(f"maskvae-{width}")}  # fmt: skip
                config = config_lib.merge(config, upstream_uris)
            baseline = None
            for workers in args.workers:
                ray_config = ray_train.RayTrainConfig(
                    num_workers=workers, storage_uri=os.path.join(workdir, "runs"),
                    run_key=uuid.uuid4().hex[:8], tracking=TrackingConfig(enabled=False), num_to_keep=1,
                )  # fmt: skip
                try:
                    result = ray_train.train(config, ray_config)
                except Exception as error:  # a benchmark row, not a crash: say why and go on
                    print(
                        f"{stage:<8} {width:<6} {config.loop.batch_size:>5} {workers:>7} failed: {error}"[
                            :200
                        ]
                    )
                    continue
                upstream[f"{stage}-{width}"] = result.checkpoint_uri
                total = result.metrics["images_per_s"] * workers  # per-rank images/s x ranks
                baseline = baseline or total / workers
                efficiency = total / (workers * baseline)
                print(f"{stage:<8} {width:<6} {config.loop.batch_size:>5} {workers:>7} {total:>12.2f} "
                      f"{efficiency:>10.2f} {result.metrics['data_wait_fraction']:>9.1%}")  # fmt: skip


# --------------------------------------------------------------------------------------------- CUDA


def random_batch(size: int, resolution: int, device: torch.device) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    label = torch.randint(0, NUM_CLASSES, (size, resolution, resolution), generator=generator).to(device)
    image = (torch.rand(size, 3, resolution, resolution, generator=generator) * 2 - 1).to(device)
    return {"image": image, "label": label, "onehot": one_hot(label), "id": torch.arange(size)}


def cuda_benchmark(args: argparse.Namespace) -> None:
    import importlib

    from torch.utils.flop_counter import FlopCounterMode

    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    print(f"{name}, torch {torch.__version__}; official_512 presets, random batches")
    print(f"{'stage':<8} {'batch':>5} {'precision':<9} {'img/s/GPU':>10} {'vs fp32':>8} {'TFLOP/s':>8} "
          f"{'GFLOP/img':>10}")  # fmt: skip
    for stage in args.stages:
        fp32 = None
        flops = None
        for precision in ("fp32", "bf16"):
            loop = {"precision": precision, "max_steps": 10**6}
            config = stage_config(stage, "official", resolution=None, batch_size=args.batch_size, loop=loop)
            size, resolution = (
                config.loop.batch_size,
                (config.model.image_size if stage == "maskvae" else config.generator.resolution),
            )
            try:
                built = importlib.import_module(f"maskgan.training.{PRESET[(stage, 'official')][0]}").build(
                    config, device
                )
                batch = random_batch(size, resolution, device)
                step = 1
                for _ in range(args.warmup):
                    built.step(batch, step)
                    step += 1
                if flops is None:
                    with FlopCounterMode(display=False) as counter:
                        built.step(batch, step)
                    step += 1
                    flops = float(counter.get_total_flops())
                torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(args.steps):
                    built.step(batch, step)
                    step += 1
                torch.cuda.synchronize()
                seconds = time.perf_counter() - start
            except Exception as error:  # a row, not a crash
                print(f"{stage:<8} {size:>5} {precision:<9} failed: {type(error).__name__}: {error}"[:200])
                continue
            images_per_s = args.steps * size / seconds
            fp32 = fp32 or images_per_s
            print(f"{stage:<8} {size:>5} {precision:<9} {images_per_s:>10.2f} {images_per_s / fp32:>7.2f}x "
                  f"{flops * args.steps / seconds / 1e12:>8.2f} {flops / size / 1e9:>10.1f}")  # fmt: skip
            del built
            torch.cuda.empty_cache()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument(
        "--widths", nargs="+", choices=("tiny", "base"), default=["tiny", "base"], help="CPU only"
    )
    parser.add_argument(
        "--workers", nargs="+", type=int, default=[1, 2], help="CPU only; the first is the baseline"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="CPU: steps per run (default 8); CUDA: timed steps (20)"
    )
    parser.add_argument("--warmup", type=int, default=3, help="CUDA: untimed steps first")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="per worker (default: CPU 4, CUDA the preset's)"
    )
    parser.add_argument("--resolution", type=int, default=64, help="CPU data px (default: %(default)s)")
    parser.add_argument(
        "--num-images", type=int, default=96, help="CPU synthetic samples (default: %(default)s)"
    )
    parser.add_argument("--workdir", help="CPU: where data and runs go (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 8 if args.device == "cpu" else 20
    if args.batch_size is None and args.device == "cpu":
        args.batch_size = 4
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device here")
        cuda_benchmark(args)
    else:
        cpu_benchmark(args)


if __name__ == "__main__":
    main()
