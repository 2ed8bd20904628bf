"""`siglite` command line: parse, call the library, print. One module per command.

A command is a module ``cli/<name>_cmd.py`` with ``register(subparsers)``; add its name to `COMMANDS`. `register` must
stay light (no torch, numpy, cv2 at import): ``siglite --help`` builds every sub-parser, so heavy modules are imported
inside the command's ``run``. The exit codes and the one-line error shape are in `cli.common`.
"""

from __future__ import annotations

import importlib
import sys

from .common import Parser, run_command

COMMANDS = ["list", "info", "classify", "encode", "eval", "bench", "embed", "search", "export", "quantize",
            "synth", "train"]
COMMANDS += ["serve"]
COMMANDS += ["convert"]  # checkpoint layouts (wp-layout)
COMMANDS += ["heatmap", "finetune", "predict"]  # VLM features, fine-tuned heads

EPILOG = """examples:
  siglite list
  siglite info --model google/siglip-base-patch16-224
  siglite classify cat.jpg dog.png --model google/siglip-base-patch16-224 --labels cat dog car
  siglite encode photos/*.jpg --model ./my-siglip --out image_emb.npy
  siglite encode --text "a red car" "a cat" --model ./my-siglip --out text_emb.npy

exit codes: 0 ok, 1 error (one line on stderr), 2 bad command line, 130 interrupted, 141 output pipe closed.
Set SIGLITE_DEBUG=1 to see the full traceback of an error."""


def build_parser() -> Parser:
    import argparse

    parser = Parser(prog="siglite", description="Run SigLIP image-text encoders, faithfully and fast.",
                    epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"siglite {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f".{name}_cmd", __package__).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except BrokenPipeError:  # `siglite --help | head`
        return 141
    except SystemExit as e:  # --help, --version, usage errors: argparse exits; return its code to in-process callers
        return e.code if isinstance(e.code, int) else 2
    return run_command(args)


def _version() -> str:
    from .. import __version__

    return __version__


if __name__ == "__main__":
    sys.exit(main())
