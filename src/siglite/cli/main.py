"""`siglite` command line: parse, call the library, print. One module per command."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from ..errors import SigliteError

COMMANDS = ["list", "info", "classify", "encode", "eval", "bench", "embed", "search", "export", "quantize",
            "synth", "train", "heatmap", "finetune", "predict"]

EPILOG = """examples:
  siglite list
  siglite info --model google/siglip-base-patch16-224
  siglite classify cat.jpg dog.png --model google/siglip-base-patch16-224 --labels cat dog car
  siglite encode photos/*.jpg --model ./my-siglip --out image_emb.npy
  siglite encode --text "a red car" "a cat" --model ./my-siglip --out text_emb.npy

Set SIGLITE_DEBUG=1 to see the full traceback of an error."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="siglite", description="Run SigLIP image-text encoders, faithfully and fast.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"siglite {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f".{name}_cmd", __package__).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except (SigliteError, FileNotFoundError, PermissionError, ValueError) as e:
        if os.environ.get("SIGLITE_DEBUG"):
            traceback.print_exc()
        print(f"siglite {args.command}: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _version() -> str:
    from .. import __version__

    return __version__


if __name__ == "__main__":
    sys.exit(main())
