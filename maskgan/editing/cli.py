"""`python -m maskgan.editing {edit,style-copy,parse}`: the Editor from the command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np
from PIL import Image

from maskgan.editing.inputs import DEFAULT_MAX_PIXELS, InputLimits

EXAMPLES = """\
examples (a model is a checkpoint folder -- local or s3:// -- a released latest_net_G.pth,
runs:/<run id>/editor or models:/maskgan-editor@champion; masks are class-id L PNGs or colour PNGs):
  python -m maskgan.editing edit --model checkpoints/ebst --image face.jpg \\
      --mask face_mask.png --edited-mask edited_mask.png --out edited.png
  python -m maskgan.editing style-copy --model checkpoints/ebst --target-mask face_mask.png \\
      --reference-image style.jpg --reference-mask style_mask.png --out styled.png
  python -m maskgan.editing parse --model checkpoints/ebst --parser checkpoints/parser \\
      --image face.jpg --out parsed.png --color
"""


DMN_PRESETS = ("dmn_official_512", "dmn_base_256", "dmn_tiny")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m maskgan.editing",
        description="Edit a face through its mask, copy a face's style onto another mask, or parse a face.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text, epilog=EXAMPLES,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        sub.add_argument(
            "--model", required=True, help="checkpoint URI, latest_net_G.pth, runs:/ or models:/ URI"
        )
        sub.add_argument("--out", required=True, help="output PNG path")
        sub.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
        sub.add_argument("--parser", help="face parser checkpoint URI (parse; optional elsewhere)")
        sub.add_argument("--tracking-uri", help="MLflow tracking URI for runs:/ and models:/ models")
        sub.add_argument(
            "--released-preset", choices=DMN_PRESETS, default="dmn_official_512",
            help="DMN shape of a released latest_net_G.pth (default: %(default)s)",
        )  # fmt: skip
        sub.add_argument(
            "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
            help="refuse inputs larger than this many pixels (default: %(default)s)",
        )  # fmt: skip
        sub.add_argument(
            "--color-tolerance", type=int, default=0,
            help="colour masks: max channel difference to a class colour (default: %(default)s)",
        )  # fmt: skip
        return sub

    edit = command("edit", "Redraw --image to follow --edited-mask, keeping its style.")
    edit.add_argument("--image", required=True)
    edit.add_argument("--mask", required=True, help="the image's mask")
    edit.add_argument("--edited-mask", required=True)
    style = command("style-copy", "Draw a face on --target-mask in the style of --reference-image.")
    style.add_argument("--target-mask", required=True)
    style.add_argument("--reference-image", required=True)
    style.add_argument("--reference-mask", required=True)
    parse = command("parse", "Write the class mask of --image (needs a face parser).")
    parse.add_argument("--image", required=True)
    parse.add_argument("--color", action="store_true", help="write palette colours instead of class ids")
    return parser


def load_editor(args: argparse.Namespace):
    """The Editor the command's flags name."""
    from maskgan.editing.editor import Editor
    from maskgan.models import dmn

    limits = InputLimits(max_pixels=args.max_pixels, color_tolerance=args.color_tolerance)
    common = {"device": args.device, "limits": limits}
    if args.model.startswith(("models:/", "runs:/")):
        from maskgan.editing.pyfunc import load_editor_from_mlflow

        return load_editor_from_mlflow(
            args.model, tracking_uri=args.tracking_uri, parser=args.parser, **common
        )
    if args.model.endswith((".pth", ".pt")):
        config = getattr(dmn, args.released_preset)()
        return Editor.from_released(args.model, config, parser=args.parser, **common)
    return Editor.from_checkpoint(args.model, parser=args.parser, **common)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; 0 on success, 2 with a one-line error on bad input or a bad model."""
    args = build_parser().parse_args(argv)
    try:
        editor = load_editor(args)
        if args.command == "edit":
            result = editor.edit(args.image, args.mask, args.edited_mask)
        elif args.command == "style-copy":
            result = editor.style_copy(args.target_mask, args.reference_image, args.reference_mask)
        else:
            from maskgan.labels import label_to_color

            ids = editor.parse(args.image)
            result = Image.fromarray(
                label_to_color(ids) if args.color else np.asarray(ids), "RGB" if args.color else "L"
            )
        result.save(args.out, format="PNG")
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({result.size[0]} x {result.size[1]})")
    return 0
