"""Forward + backward throughput of the DMN generator + discriminator, as ratios to fp32 eager.

One step = G(M, M, I) -> L1 to I, D on the fake and on the real pair (LSGAN terms), backward through
both (no optimiser). Every variant is timed in the same run, on the same inputs, and reported as
images/s and as a ratio to fp32 eager measured just before it; FLOPs per step are counted once
with torch.utils.flop_counter.FlopCounterMode (fp32 eager) to give the achieved TFLOP/s.

  python benchmarks/models.py                    # CPU: 256 px, tiny and base (released) widths
  python benchmarks/models.py --device cuda      # GPU: 512 px, official_512 + official D

Benchmarks are not tests: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from maskgan.labels import NUM_CLASSES, one_hot
from maskgan.models.discriminator import (
    DiscriminatorConfig,
    MultiscaleDiscriminator,
    discriminator_official,
    discriminator_tiny,
)
from maskgan.models.dmn import DenseMappingNetwork, DMNConfig, dmn_base_256, dmn_official_512, dmn_tiny

WIDTHS: dict[str, tuple[Callable[[], DMNConfig], Callable[[], DiscriminatorConfig]]] = {
    "tiny": (dmn_tiny, discriminator_tiny),
    "base": (dmn_base_256, discriminator_official),
    "official": (dmn_official_512, discriminator_official),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Variant:
    """One way to run the same step."""

    channels_last: bool = False
    bf16: bool = False
    compile: bool = False

    @property
    def name(self) -> str:
        parts = [n for n, on in (("compile", self.compile), ("channels_last", self.channels_last),
                                 ("bf16", self.bf16)) if on]  # fmt: skip
        return "+".join(parts) or "fp32 eager"


VARIANTS = {
    "eager": Variant(),
    "channels_last": Variant(channels_last=True),
    "bf16": Variant(bf16=True),
    "channels_last+bf16": Variant(channels_last=True, bf16=True),
    "compile": Variant(compile=True),
    "compile+bf16": Variant(compile=True, bf16=True),
    "compile+channels_last+bf16": Variant(compile=True, channels_last=True, bf16=True),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class BenchmarkConfig:
    """What to time: device, size, widths, variants, batch and iteration counts."""

    device: str = "cpu"
    size: int = 256
    widths: tuple[str, ...] = ("tiny", "base")
    variants: tuple[str, ...] = tuple(VARIANTS)  # the CLI drops compile+bf16 on CPU (time)
    batch_size: int = 1
    warmup: int = 1
    iters: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        for width in self.widths:
            if width not in WIDTHS:
                raise ValueError(f"widths: unknown {width!r}; expected some of {', '.join(WIDTHS)}")
        for variant in self.variants:
            if variant not in VARIANTS:
                raise ValueError(f"variants: unknown {variant!r}; expected some of {', '.join(VARIANTS)}")
        if "eager" not in self.variants:
            raise ValueError("variants must include 'eager' (the baseline of every ratio)")
        for name in ("size", "batch_size", "iters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")


@dataclasses.dataclass(frozen=True)
class Row:
    width: str
    variant: str
    images_per_s: float | None
    warmup_s: float
    flops_per_step: float
    error: str = ""


def make_inputs(batch: int, size: int, device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocky random one-hot masks and uniform images in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, NUM_CLASSES, (batch, 1, size // 16, size // 16), generator=generator)
    label = torch.nn.functional.interpolate(coarse.float(), size=(size, size), mode="nearest")[:, 0].long()
    image = torch.rand(batch, 3, size, size, generator=generator) * 2 - 1
    return one_hot(label).to(device), image.to(device)


def step(generator, discriminator, mask, image, variant: Variant) -> None:
    """One G + D forward and backward."""
    device_type = mask.device.type
    autocast = torch.autocast(device_type, dtype=torch.bfloat16) if variant.bf16 else contextlib.nullcontext()
    with autocast:
        fake = generator(mask, mask, image)
        loss = (fake.float() - image).abs().mean()
        for features in discriminator(mask, fake):
            loss = loss + features[-1].float().square().mean()
        for features in discriminator(mask, image):
            loss = loss + (features[-1].float() - 1).square().mean()
    loss.backward()


def build(width: str, device: torch.device, seed: int, variant: Variant):
    """Fresh G and D for one variant (same seed, so every variant starts from the same weights)."""
    g_preset, d_preset = WIDTHS[width]
    torch.manual_seed(seed)
    generator = DenseMappingNetwork(g_preset()).to(device)
    discriminator = MultiscaleDiscriminator(d_preset()).to(device)
    if variant.channels_last:
        generator = generator.to(memory_format=torch.channels_last)
        discriminator = discriminator.to(memory_format=torch.channels_last)
    return generator, discriminator


def count_flops(width: str, config: BenchmarkConfig, device: torch.device) -> float:
    """FLOPs of one fp32 eager step (forward + backward), counted by FlopCounterMode."""
    generator, discriminator = build(width, device, config.seed, Variant())
    mask, image = make_inputs(config.batch_size, config.size, device, config.seed)
    counter = FlopCounterMode(display=False)
    with counter:
        step(generator, discriminator, mask, image, Variant())
    return float(counter.get_total_flops())


def load_note() -> str:
    """The 1-minute load average on CPU runs: other processes on the cores skew every figure."""
    return f"   load {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_variant(
    width: str, variant: Variant, config: BenchmarkConfig, device: torch.device
) -> tuple[float, float]:
    """(images/s over the timed iterations, seconds spent in warmup incl. compilation)."""
    generator, discriminator = build(width, device, config.seed, variant)
    if variant.compile:
        torch._dynamo.reset()  # else guards pile up on the shared forward code across variants
        generator, discriminator = torch.compile(generator), torch.compile(discriminator)
    mask, image = make_inputs(config.batch_size, config.size, device, config.seed)
    if variant.channels_last:
        mask = mask.contiguous(memory_format=torch.channels_last)
        image = image.contiguous(memory_format=torch.channels_last)
    params = list(generator.parameters()) + list(discriminator.parameters())

    def one() -> None:
        for param in params:
            param.grad = None
        step(generator, discriminator, mask, image, variant)

    start = time.perf_counter()
    for _ in range(config.warmup):
        one()
    synchronize(device)
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(config.iters):
        one()
    synchronize(device)
    elapsed = time.perf_counter() - start
    return config.batch_size * config.iters / elapsed, warmup_s


def main(config: BenchmarkConfig) -> list[Row]:
    """Time every width x variant; print and return the rows."""
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for but torch.cuda.is_available() is False")
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"torch {torch.__version__} | {where} | {config.size} px | batch {config.batch_size} | "
          f"warmup {config.warmup} | timed iters {config.iters}")  # fmt: skip
    rows = []
    for width in config.widths:
        flops = count_flops(width, config, device)
        g_preset, d_preset = WIDTHS[width]
        g_params = sum(p.numel() for p in DenseMappingNetwork(g_preset()).parameters())
        d_params = sum(p.numel() for p in MultiscaleDiscriminator(d_preset()).parameters())
        print(f"\n[{width}] G {g_params / 1e6:.2f} M params, D {d_params / 1e6:.2f} M params, "
              f"{flops / config.batch_size / 1e9:.1f} GFLOP per image per step (fwd + bwd)")  # fmt: skip
        print(f"{'variant':<28} {'images/s':>10} {'vs eager':>9} {'TFLOP/s':>9} {'warmup s':>9}")
        baseline = None
        for key in ["eager", *(v for v in config.variants if v != "eager")]:  # baseline first
            variant = VARIANTS[key]
            try:
                images_per_s, warmup_s = time_variant(width, variant, config, device)
            except Exception as error:  # a variant that cannot run here is reported, not fatal
                row = Row(width, variant.name, None, 0.0, flops, f"{type(error).__name__}: {error}"[:200])
                print(f"{variant.name:<28} failed: {row.error}")
                rows.append(row)
                continue
            if key == "eager":
                baseline = images_per_s
            ratio = f"{images_per_s / baseline:.2f}x" if baseline else "n/a"
            tflops = flops / config.batch_size * images_per_s / 1e12
            print(f"{variant.name:<28} {images_per_s:>10.3f} {ratio:>9} {tflops:>9.3f} {warmup_s:>9.1f}"
                  f"{load_note()}")  # fmt: skip
            rows.append(Row(width, variant.name, images_per_s, warmup_s, flops))
        # The baseline once more: its drift shows how much the machine's load moved during the run.
        if baseline is None:
            continue
        again, _ = time_variant(width, VARIANTS["eager"], config, device)
        print(f"{'fp32 eager (repeat)':<28} {again:>10.3f} {again / baseline:>8.2f}x "
              f"{flops / config.batch_size * again / 1e12:>9.3f} {'':>9}{load_note()}")  # fmt: skip
    return rows


def parse_args(argv: list[str] | None = None) -> BenchmarkConfig:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--size", type=int, help="image size in px (default: 256 on cpu, 512 on cuda)")
    parser.add_argument("--widths", help=f"comma-separated, from {','.join(WIDTHS)} "
                        "(default: tiny,base on cpu, official on cuda)")  # fmt: skip
    parser.add_argument(
        "--variants",
        help=f"comma-separated from {','.join(VARIANTS)} (default: all; on cpu all but compile+bf16)",
    )
    parser.add_argument("--batch-size", type=int, help="default: 1 on cpu, 4 on cuda")
    parser.add_argument(
        "--warmup", type=int, help="untimed steps per variant (incl. compile); default 2 cpu, 3 cuda"
    )
    parser.add_argument("--iters", type=int, help="timed steps per variant; default 3 on cpu, 10 on cuda")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    widths = args.widths or ("official" if cuda else "tiny,base")
    variants = args.variants or ",".join(v for v in VARIANTS if cuda or v != "compile+bf16")
    return BenchmarkConfig(
        device=args.device,
        size=args.size or (512 if cuda else 256),
        widths=tuple(w for w in widths.split(",") if w),
        variants=tuple(v for v in variants.split(",") if v),
        batch_size=args.batch_size or (4 if cuda else 1),
        warmup=args.warmup if args.warmup is not None else (3 if cuda else 2),
        iters=args.iters or (10 if cuda else 3),
    )


if __name__ == "__main__":
    main(parse_args())
