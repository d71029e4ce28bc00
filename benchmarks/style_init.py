"""Is the DMN's style path learned under the released N(0, 0.02) init or PyTorch's default init?

Trains the DMN stage (GAN + feature matching + pixel L1, no VGG) on in-memory synthetic faces and
prints, every --every steps, the val reconstruction L1 and the val style change
mean |G(M, M', I') - G(M, M, I)| (M', I' another val face) for each init and seed. No Ray, no files:
runs on a GPU machine with only torch / numpy / pillow.

    python benchmarks/style_init.py --width official --resolution 128 --steps 600 --device cuda
    python benchmarks/style_init.py --width tiny --resolution 32 --steps 300
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from maskgan.data import synthetic
from maskgan.data.loader import to_torch
from maskgan.models.discriminator import discriminator_official, discriminator_tiny
from maskgan.models.dmn import dmn_official_512, dmn_tiny
from maskgan.models.perceptual import PerceptualConfig
from maskgan.training import dmn
from maskgan.training.gan import GANLossConfig
from maskgan.training.loop import LoopConfig, validate
from maskgan.training.optim import OptimizerConfig


def faces(num: int, resolution: int, start_id: int) -> dict[str, np.ndarray]:
    """num synthetic faces rendered at `resolution` (image and mask), as a decoded numpy batch."""
    config = synthetic.SyntheticConfig(
        num_images=num, image_size=resolution, mask_size=resolution, start_id=start_id
    )
    samples = [synthetic.render_sample(config, image_id) for image_id in config.ids]
    return {
        "id": np.array([s.image_id for s in samples]),
        "image": np.stack([s.image for s in samples]),
        "label": np.stack([s.label for s in samples]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", choices=("tiny", "official"), default="tiny")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--train-images", type=int, default=320)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.width == "tiny":
        generator, discriminator = dmn_tiny(), discriminator_tiny()
    else:
        generator, discriminator = dmn_official_512(), discriminator_official()
    generator = dataclasses.replace(generator, resolution=args.resolution)
    train = faces(args.train_images, args.resolution, 0)
    val = to_torch(faces(16, args.resolution, 100_000), device)
    print(f"width {args.width} @ {args.resolution}px, batch {args.batch_size}, lr {args.lr}, device {device}")
    for init in ("release", "pytorch"):
        for seed in args.seeds:
            config = dmn.DMNTrainConfig(
                generator=generator, discriminator=discriminator,
                perceptual=PerceptualConfig(fallback="none"),
                losses=GANLossConfig(perceptual_weight=0.0, reconstruction_l1_weight=10.0),
                optimizer=OptimizerConfig(lr=args.lr), init=init,
                loop=LoopConfig(max_steps=args.steps, batch_size=args.batch_size, seed=seed),
            )  # fmt: skip
            stage = dmn.build(config, device)
            rng = np.random.default_rng(seed)
            started = time.perf_counter()
            row = []
            for step in range(args.steps + 1):
                if step % args.every == 0:
                    metrics = validate(stage, iter([val]), 1)
                    row.append(f"{step}: {metrics['val/l1']:.3f}/{metrics['val/style_change']:.4f}")
                if step == args.steps:
                    break
                index = rng.choice(args.train_images, args.batch_size, replace=False)
                stage.step(to_torch({key: value[index] for key, value in train.items()}, device), step + 1)
            seconds = time.perf_counter() - started
            print(
                f"{init:8s} seed {seed}  val l1/style_change  " + "  ".join(row) + f"  ({seconds:.0f}s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
