"""Face-parser stage: cross-entropy (+ soft dice) from image to class map, Adam; one step per call.

Validation reports pixel accuracy and mIoU (torchmetrics MeanIoU: the IoU of every class present in
the prediction or the target of an image, averaged over those (image, class) pairs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from maskgan.labels import NUM_CLASSES
from maskgan.models import parser as models
from maskgan.models.parser import FaceParser, ParserConfig
from maskgan.training.loop import DataConfig, LoopConfig, Stage, as_floats
from maskgan.training.optim import OptimizerConfig, make_adam, make_schedule


@dataclass(frozen=True, kw_only=True)
class ParserTrainConfig:
    """Parser training: model, Adam, loss weights, loop, data."""

    model: ParserConfig = field(default_factory=models.parser_512)
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=1e-3, betas=(0.9, 0.999)))
    dice_weight: float = 0.5  # total = cross-entropy + dice_weight * (1 - soft dice); small parts count more
    loop: LoopConfig
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        if not self.dice_weight >= 0:
            raise ValueError(f"dice_weight must be >= 0, got {self.dice_weight}")


def parser_tiny() -> ParserTrainConfig:
    """32 px tiny U-Net, a few hundred steps: tests and `make run`."""
    return ParserTrainConfig(
        model=models.parser_tiny(),
        optimizer=OptimizerConfig(lr=3e-3, betas=(0.9, 0.999)),
        loop=LoopConfig(
            max_steps=300,
            batch_size=8,
            log_every=10,
            image_every=100,
            checkpoint_every=100,
            val_every=100,
            val_batches=2,
        ),  # fmt: skip
    )


def parser_base_256() -> ParserTrainConfig:
    """256 px, batch 16 per worker, flip on (left / right classes swapped by the loader)."""
    return ParserTrainConfig(
        model=models.parser_base_256(),
        optimizer=OptimizerConfig(lr=1e-3, betas=(0.9, 0.999), constant_steps=20_000, decay_steps=20_000),
        loop=LoopConfig(
            max_steps=40_000,
            batch_size=16,
            log_every=50,
            image_every=2_000,
            checkpoint_every=5_000,
            val_every=2_000,
            val_batches=8,
            grad_clip=10.0,
        ),  # fmt: skip
        data=DataConfig(flip=True),
    )


def parser_512() -> ParserTrainConfig:
    """512 px (the mask resolution), batch 8 per worker, flip on."""
    return ParserTrainConfig(
        model=models.parser_512(),
        optimizer=OptimizerConfig(lr=1e-3, betas=(0.9, 0.999), constant_steps=30_000, decay_steps=30_000),
        loop=LoopConfig(
            max_steps=60_000,
            batch_size=8,
            log_every=50,
            image_every=2_000,
            checkpoint_every=5_000,
            val_every=2_000,
            val_batches=8,
            grad_clip=10.0,
        ),  # fmt: skip
        data=DataConfig(flip=True),
    )


PRESETS: dict[str, Callable[[], ParserTrainConfig]] = {
    "parser_tiny": parser_tiny,
    "parser_base_256": parser_base_256,
    "parser_512": parser_512,
}


def soft_dice_loss(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """1 - mean soft dice over (sample, class in the target); logits (B, C, H, W), label (B, H, W)."""
    probabilities = logits.float().softmax(dim=1)
    target = F.one_hot(label, logits.shape[1]).permute(0, 3, 1, 2).float()  # (B, C, H, W)
    intersection = (probabilities * target).sum(dim=(2, 3))
    total = probabilities.sum(dim=(2, 3)) + target.sum(dim=(2, 3))
    dice = (2 * intersection + 1.0) / (total + 1.0)  # (B, C); +1 keeps absent classes finite
    present = target.sum(dim=(2, 3)) > 0
    return 1.0 - dice[present].mean()


def segmentation_metrics(predicted: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
    """Pixel accuracy and mIoU (torchmetrics) of (B, H, W) class ids against (B, H, W) targets."""
    from torchmetrics.classification import MulticlassAccuracy
    from torchmetrics.segmentation import MeanIoU

    accuracy = MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro").to(label.device)
    miou = MeanIoU(num_classes=NUM_CLASSES, input_format="index").to(label.device)
    return {
        "pixel_accuracy": accuracy(predicted.reshape(-1), label.reshape(-1)),
        "miou": miou(predicted, label),
    }


class ParserStage(Stage):
    """Trains a FaceParser; networks {"parser"}."""

    name = "parser"

    def __init__(self, config: ParserTrainConfig, device: torch.device | str, rank: int = 0) -> None:
        super().__init__(loop=config.loop, device=device, rank=rank)
        self.config = config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.loop.seed)  # the same init on every rank
            self.parser = FaceParser(config.model).to(self.device)
        self.optimizer = make_adam(self.parser.parameters(), config.optimizer)
        self.scheduler = make_schedule(self.optimizer, config.optimizer)

    def networks(self) -> dict[str, nn.Module]:
        return {"parser": self.parser}

    def _state_objects(self) -> dict[str, object]:
        return {
            "parser": self.parser,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "scaler": self.scaler,
        }

    def _check_size(self, image: torch.Tensor) -> None:
        size = self.config.model.image_size
        if tuple(image.shape[-2:]) != (size, size):
            raise ValueError(
                f"parser.image_size is {size} but the data holds {tuple(image.shape[-2:])} images; "
                f"set model.image_size to the dataset's resolution"
            )

    def step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        self.parser.train()
        image = batch["image"].to(self.device)  # (B, 3, H, W) in [-1, 1]
        label = batch["label"].to(self.device)  # (B, H, W) int64
        self._check_size(image)
        lr = self.optimizer.param_groups[0]["lr"]
        with self.autocast():
            logits = self.runner("parser")(image)
        cross_entropy = F.cross_entropy(logits.float(), label)
        dice = soft_dice_loss(logits, label)
        total = cross_entropy + self.config.dice_weight * dice
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(total)
        grad_norm = self.optimizer_step(self.optimizer)
        self.finish_step()
        self.scheduler.step()
        return as_floats(
            {
                "loss/total": total,
                "loss/cross_entropy": cross_entropy,
                "loss/dice": dice,
                "lr/parser": lr,
                "grad_norm/parser": grad_norm,
            }
        )

    @torch.no_grad()
    def validate(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Eval mode: cross-entropy, pixel accuracy, mIoU."""
        self.parser.eval()
        image, label = batch["image"].to(self.device), batch["label"].to(self.device)
        with self.autocast():
            logits = self.parser(image)
        metrics = segmentation_metrics(logits.argmax(dim=1), label)
        return as_floats(
            {
                "val/cross_entropy": F.cross_entropy(logits.float(), label),
                "val/pixel_accuracy": metrics["pixel_accuracy"],
                "val/miou": metrics["miou"],
            }
        )

    @torch.no_grad()
    def images(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """image | mask | parsed."""
        image = batch["image"].to(self.device)
        return {"image": image, "mask": batch["label"].to(self.device), "parsed": self.parser.parse(image)}


def build(config: ParserTrainConfig, device: torch.device | str, *, rank: int = 0) -> ParserStage:
    """The parser stage on `device` (rank only seeds per-step randomness; this stage draws none)."""
    if not isinstance(config, ParserTrainConfig):
        raise ValueError(f"parser.build needs a ParserTrainConfig, got {type(config).__name__}")
    return ParserStage(config, device, rank=rank)
