"""The Editor: mask-driven face editing, style copy and face parsing with a trained or released generator.

Inference is the release's: `edit` is G(edited_mask, mask, image) -- the style code comes from the
original image read through its own mask, the backbone draws the edited mask (the released demo's
`inference(label, label_ref, image_ref)`). The alpha blender is a training device of EBST (it blends
two edits made in opposite directions back into the original for the consistency loss); a single
user edit has no opposite partner, so inference never calls it. It is loaded when a checkpoint holds
one (`editor.blender`), as is the MaskVAE (`editor.mask_vae`, e.g. for evaluation's simulated edits).

Inputs of any size are resized to the generator's square resolution (bicubic for images, nearest
for masks) and the output is resized back to the input's size.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from maskgan import config as config_lib
from maskgan.editing.inputs import InputLimits, check_same_shape, load_image, load_mask, size_of
from maskgan.labels import NUM_CLASSES, one_hot
from maskgan.models.blender import AlphaBlender, BlenderConfig
from maskgan.models.dmn import DenseMappingNetwork, DMNConfig
from maskgan.models.mask_vae import MaskVAE, MaskVAEConfig
from maskgan.storage import StorageConfig

# Where a trained face parser's builder will live (the parser is built by another piece of work):
# a module exposing build_parser(config: dict) -> nn.Module mapping (B, 3, H, W) [-1, 1] images to
# (B, 19, H, W) logits, given the `model` dict of a parser checkpoint's meta.json config.
PARSER_MODULE = "maskgan.models.parser"
# meta.json config key of each network's model config, per network name.
CONFIG_KEYS = {"generator": ("generator",), "blender": ("blender",), "mask_vae": ("mask_vae", "model")}


@dataclass(frozen=True)
class Request:
    """Decoded, checked inputs of one editor call; Editor.run turns it into the output."""

    op: str  # edit | style_copy | parse
    image: np.ndarray  # (H, W, 3) uint8: the photo / the style reference
    reference_mask: np.ndarray | None  # (H, W) uint8 class ids of `image`
    target_mask: np.ndarray | None  # (H', W') uint8 class ids to draw (edited or target mask)
    out_size: tuple[int, int]  # (width, height) of the output


@dataclass(frozen=True)
class LoadedFrom:
    """What an Editor was built from, for messages and the CLI."""

    kind: str  # checkpoint | released | mlflow
    uri: str
    stage: str | None = None
    step: int | None = None


class Editor:
    """Edits faces through their masks. Build with Editor.load(uri) or one of the from_* constructors."""

    def __init__(
        self,
        generator: DenseMappingNetwork,
        *,
        blender: AlphaBlender | None = None,
        mask_vae: MaskVAE | None = None,
        parser: nn.Module | None = None,
        limits: InputLimits | None = None,
        device: torch.device | str = "cpu",
        source: LoadedFrom | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.generator = generator.to(self.device).eval()
        self.blender = None if blender is None else blender.to(self.device).eval()
        self.mask_vae = None if mask_vae is None else mask_vae.to(self.device).eval()
        self.parser = None if parser is None else parser.to(self.device).eval()
        self.limits = limits or InputLimits()
        self.source = source or LoadedFrom(kind="in-memory", uri="<in memory>")

    @property
    def resolution(self) -> int:
        """The square size the generator runs at (its config's training resolution)."""
        return self.generator.config.resolution

    # ------------------------------------------------------------------------------------ loading

    @classmethod
    def load(cls, uri: str, **kwargs: Any) -> Editor:
        """From models:/..., runs:/..., a released latest_net_G.pth, or a checkpoint (local or s3://)."""
        uri = os.fspath(uri)
        if uri.startswith(("models:/", "runs:/")):
            from maskgan.editing.pyfunc import load_editor_from_mlflow

            return load_editor_from_mlflow(uri, **kwargs)
        if uri.endswith((".pth", ".pt")) and os.path.isfile(uri):
            return cls.from_released(uri, **kwargs)
        return cls.from_checkpoint(uri, **kwargs)

    @classmethod
    def from_checkpoint(
        cls,
        uri: str,
        storage_config: StorageConfig | None = None,
        *,
        parser: nn.Module | str | None = None,
        **kwargs: Any,
    ) -> Editor:
        """A DMN or EBST checkpoint (or a folder holding checkpoints: the latest is used).

        Networks are rebuilt from meta.json's resolved config and loaded with weights_only=True:
        the EMA generator when the checkpoint has one, plus the blender and MaskVAE when present.
        """
        from maskgan.training import checkpoint

        uri = checkpoint.resolve_checkpoint(uri, storage_config)
        meta = checkpoint.read_meta(uri, storage_config)
        networks, stage = list(meta.get("networks", [])), meta.get("stage")
        generator_name = "generator_ema" if "generator_ema" in networks else "generator"
        if generator_name not in networks:
            raise ValueError(
                f"checkpoint {uri} (stage {stage!r}) holds no generator (networks: {', '.join(networks)}); "
                "the editor needs a DMN or EBST checkpoint, or a released latest_net_G.pth"
            )

        def build(name: str, config_cls: type, model_cls: type, weights_name: str) -> nn.Module:
            model_config = config_lib.from_dict(config_cls, _network_config(meta, name, uri), name)
            state = checkpoint.load_weights(uri, weights_name, storage_config)
            # Built on the meta device and given the loaded tensors: no random init of ~100 M
            # parameters that the weights would overwrite anyway.
            with torch.device("meta"):
                model = model_cls(model_config)
            try:
                model.load_state_dict(state, strict=True, assign=True)
            except RuntimeError as error:
                raise ValueError(
                    f"checkpoint {uri}: weights/{weights_name}.pt do not fit the {name} of its meta.json "
                    f"config: {str(error).splitlines()[0]}"
                ) from None
            left = [
                key for key, value in [*model.named_parameters(), *model.named_buffers()] if value.is_meta
            ]
            if left:  # non-persistent buffers hold no weights: build those networks the ordinary way
                model = model_cls(model_config)
                model.load_state_dict(state, strict=True)
            return model

        generator = build("generator", DMNConfig, DenseMappingNetwork, generator_name)
        blender = build("blender", BlenderConfig, AlphaBlender, "blender") if "blender" in networks else None
        mask_vae = build("mask_vae", MaskVAEConfig, MaskVAE, "mask_vae") if "mask_vae" in networks else None
        if isinstance(parser, str):
            parser = load_parser(parser, storage_config)
        source = LoadedFrom(kind="checkpoint", uri=uri, stage=stage, step=meta.get("step"))
        return cls(generator, blender=blender, mask_vae=mask_vae, parser=parser, source=source, **kwargs)

    @classmethod
    def from_released(
        cls,
        path: str | os.PathLike[str],
        config: DMNConfig | None = None,
        *,
        parser: nn.Module | str | None = None,
        **kwargs: Any,
    ) -> Editor:
        """The authors' released latest_net_G.pth (default DMNConfig = official 512 px)."""
        from maskgan.models.official import load_released_generator

        generator = load_released_generator(path, config)
        if isinstance(parser, str):
            parser = load_parser(parser)
        source = LoadedFrom(kind="released", uri=os.fspath(path))
        return cls(generator, parser=parser, source=source, **kwargs)

    @classmethod
    def from_run(cls, run_id: str, tracking_uri: str | None = None, **kwargs: Any) -> Editor:
        """An MLflow run: its logged `editor` model, else the checkpoint its checkpoint tag names."""
        from maskgan.editing.pyfunc import load_editor_from_run

        return load_editor_from_run(run_id, tracking_uri=tracking_uri, **kwargs)

    @classmethod
    def from_registry(cls, model_uri: str = "models:/maskgan-editor@champion", **kwargs: Any) -> Editor:
        """A registered maskgan-editor version (alias or number), through its pyfunc."""
        from maskgan.editing.pyfunc import load_editor_from_mlflow

        return load_editor_from_mlflow(model_uri, **kwargs)

    # ------------------------------------------------------------------------------------ editing

    def edit(self, image: Any, mask: Any, edited_mask: Any) -> Image.Image:
        """The image redrawn to follow edited_mask, in its own style: G(edited_mask, mask, image)."""
        return self.run(self.prepare_edit(image, mask, edited_mask))

    def style_copy(self, target_mask: Any, reference_image: Any, reference_mask: Any) -> Image.Image:
        """A face drawn on target_mask in the style of reference_image; the output has target_mask's size."""
        return self.run(self.prepare_style_copy(target_mask, reference_image, reference_mask))

    def parse(self, image: Any) -> np.ndarray:
        """(H, W) uint8 class ids of a face photo, from the loaded face parser, at the image's size."""
        return self.run(self.prepare_parse(image))

    def prepare_edit(self, image: Any, mask: Any, edited_mask: Any) -> Request:
        """Decode and check an edit's inputs (every ValueError comes from here, before any tensor)."""
        return prepare_edit(image, mask, edited_mask, self.limits)

    def prepare_style_copy(self, target_mask: Any, reference_image: Any, reference_mask: Any) -> Request:
        """Decode and check a style copy's inputs."""
        return prepare_style_copy(target_mask, reference_image, reference_mask, self.limits)

    def prepare_parse(self, image: Any) -> Request:
        """Check that a parser is loaded, decode and check the photo."""
        if self.parser is None:
            raise ValueError(
                f"no face parser is loaded in this editor ({self.source.kind} {self.source.uri}); pass "
                "parser=<module or parser checkpoint URI> when loading, or use a registered maskgan-editor "
                "that bundles one"
            )
        return prepare_parse(image, self.limits)

    def run(self, request: Request) -> Image.Image | np.ndarray:
        """Run a prepared request: an RGB image (edit, style_copy) or (H, W) uint8 class ids (parse)."""
        return self.run_batch([request])[0]

    def run_batch(self, requests: list[Request]) -> list[Image.Image | np.ndarray]:
        """Run prepared requests, one network call per kind (parse / generate): outputs in input order.

        Every network is per-sample (instance norm, AdaIN, GroupNorm): a batch gives each request
        what it would get alone, up to float rounding.
        """
        outputs: list[Image.Image | np.ndarray | None] = [None] * len(requests)
        parse = [i for i, request in enumerate(requests) if request.op == "parse"]
        generate = [i for i, request in enumerate(requests) if request.op != "parse"]
        if parse:
            ids = self._parse([requests[i].image for i in parse])
            for i, class_ids in zip(parse, ids, strict=True):
                outputs[i] = np.asarray(
                    Image.fromarray(class_ids).resize(requests[i].out_size, Image.Resampling.NEAREST)
                )
        if generate:
            chosen = [requests[i] for i in generate]
            images = self._generate(
                [r.target_mask for r in chosen], [r.reference_mask for r in chosen], [r.image for r in chosen]
            )
            for i, image in zip(generate, images, strict=True):
                outputs[i] = image.resize(requests[i].out_size, Image.Resampling.BICUBIC)
        return outputs

    def _parse(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Photos -> (size, size) uint8 class ids at the parser's resolution."""
        if self.parser is None:
            raise ValueError(
                f"no face parser is loaded in this editor ({self.source.kind} {self.source.uri})"
            )
        size = _parser_resolution(self.parser) or self.resolution
        batch = torch.cat([self._image_tensor(rgb, size) for rgb in images])
        with torch.inference_mode():
            logits = self.parser(batch)  # (B, 19, size, size)
        if logits.dim() != 4 or logits.shape[:2] != (len(images), NUM_CLASSES):
            raise ValueError(
                f"the parser returned shape {tuple(logits.shape)}; expected ({len(images)}, 19, H, W) logits"
            )
        return list(logits.argmax(dim=1).to(torch.uint8).cpu().numpy())

    # ---------------------------------------------------------------------------------- tensors

    def _image_tensor(self, rgb: np.ndarray, size: int) -> torch.Tensor:
        """(H, W, 3) uint8 -> (1, 3, size, size) float in [-1, 1] on the editor's device."""
        resized = np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BICUBIC))
        tensor = torch.from_numpy(resized.copy()).to(self.device).permute(2, 0, 1)[None].float()
        return tensor / 127.5 - 1.0

    def _mask_tensor(self, ids: np.ndarray, size: int) -> torch.Tensor:
        """(H, W) uint8 class ids -> (1, 19, size, size) one-hot (nearest resize keeps ids exact)."""
        resized = np.asarray(Image.fromarray(ids).resize((size, size), Image.Resampling.NEAREST))
        return one_hot(torch.from_numpy(resized.copy()).to(self.device)[None].long())

    def _generate(
        self, target_ids: list[np.ndarray], reference_ids: list[np.ndarray], images: list[np.ndarray]
    ) -> list[Image.Image]:
        size = self.resolution
        with torch.inference_mode():
            out = self.generator(
                torch.cat([self._mask_tensor(ids, size) for ids in target_ids]),
                torch.cat([self._mask_tensor(ids, size) for ids in reference_ids]),
                torch.cat([self._image_tensor(rgb, size) for rgb in images]),
            )  # (B, 3, size, size) in [-1, 1]
        pixels = ((out.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
        return [Image.fromarray(array, mode="RGB") for array in pixels.cpu().numpy()]


def prepare_edit(image: Any, mask: Any, edited_mask: Any, limits: InputLimits) -> Request:
    """Decode and check an edit's inputs under limits (no model needed: a web front end runs this)."""
    rgb = load_image("image", image, limits)
    ids = load_mask("mask", mask, limits)
    edited = load_mask("edited_mask", edited_mask, limits)
    check_same_shape("image", size_of(rgb), "mask", size_of(ids))
    check_same_shape("mask", size_of(ids), "edited_mask", size_of(edited))
    return Request("edit", rgb, ids, edited, size_of(rgb))


def prepare_style_copy(
    target_mask: Any, reference_image: Any, reference_mask: Any, limits: InputLimits
) -> Request:
    """Decode and check a style copy's inputs under limits."""
    target = load_mask("target_mask", target_mask, limits)
    rgb = load_image("reference_image", reference_image, limits)
    ids = load_mask("reference_mask", reference_mask, limits)
    check_same_shape("reference_image", size_of(rgb), "reference_mask", size_of(ids))
    return Request("style_copy", rgb, ids, target, size_of(target))


def prepare_parse(image: Any, limits: InputLimits) -> Request:
    """Decode and check a photo to parse under limits."""
    rgb = load_image("image", image, limits)
    return Request("parse", rgb, None, None, size_of(rgb))


def _network_config(meta: dict, network: str, uri: str) -> dict:
    config = meta.get("config") or {}
    for key in CONFIG_KEYS[network]:
        if isinstance(config.get(key), dict):
            return config[key]
    raise ValueError(
        f"checkpoint {uri} holds {network} weights but its meta.json config has no "
        f"{' or '.join(CONFIG_KEYS[network])} section to rebuild it from"
    )


def _parser_resolution(parser: nn.Module) -> int | None:
    for owner in (parser, getattr(parser, "config", None)):
        for name in ("resolution", "image_size"):
            value = getattr(owner, name, None)
            if isinstance(value, int):
                return value
    return None


def load_parser(uri: str, storage_config: StorageConfig | None = None) -> nn.Module:
    """A face parser from its checkpoint (network "parser", config section "model") via PARSER_MODULE."""
    from maskgan.training import checkpoint

    uri = checkpoint.resolve_checkpoint(uri, storage_config)
    meta = checkpoint.read_meta(uri, storage_config)
    try:
        module = importlib.import_module(PARSER_MODULE)
    except ModuleNotFoundError:
        raise ValueError(
            f"cannot load the parser at {uri}: this install has no face parser implementation "
            f"({PARSER_MODULE}.build_parser)"
        ) from None
    parser = module.build_parser((meta.get("config") or {}).get("model") or {})
    parser.load_state_dict(checkpoint.load_weights(uri, "parser", storage_config), strict=True)
    return parser
