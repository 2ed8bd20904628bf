"""What every command shares: option types that validate where they are parsed, the model options, --overwrite and
--quiet, output-path checks, progress bars, tables/JSON, and the exit-code convention.

Exit codes (every command):

    0    success
    1    an error: bad input, a missing file, a refused overwrite ... one line on stderr, ``siglite CMD: error: ...``
    2    a usage error found while parsing the command line (argparse's code), one line on stderr
    130  interrupted (Ctrl-C); the command says what was kept and how to go on
    141  stdout closed early (``siglite ... | head``): stops quietly, as coreutils do on SIGPIPE

``SIGLITE_DEBUG=1`` prints the full traceback of an error as well.

This module imports nothing heavy (no torch, no numpy at import): ``siglite --help`` builds every sub-parser.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import traceback
from pathlib import Path

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 0, 1, 2, 130, 141

DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?|mps|xpu(:\d+)?)$")


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (``siglite CMD: error: ...  (see siglite CMD --help)``), exit code 2.
    Sub-parsers inherit the class, so every command gets it."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# -- option types: validate where parsed -------------------------------------------------------------------------------


def _int_at_least(text: str, minimum: int, expected: str, bound: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, "a positive integer", "a positive integer")


def nonnegative_int(text: str) -> int:
    return _int_at_least(text, 0, "an integer >= 0", ">= 0")


def device(text: str) -> str:
    """cpu, cuda, cuda:N, mps, xpu[:N] (whether CUDA is actually there is checked by `siglite.load`)."""
    if not DEVICE_RE.match(text):
        hint = "; did you mean cuda?" if text.lower() in ("gpu", "nvidia") else ""
        raise argparse.ArgumentTypeError(f"unknown device {text!r} (cpu, cuda, cuda:N, mps){hint}")
    return text


def template(text: str) -> str:
    """A prompt template with one ``{}`` for the label (checked with `check_template`)."""
    from ..errors import SigliteError
    from ..pipeline import check_template

    try:
        return check_template(text)
    except SigliteError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def existing_file(text: str) -> str:
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a folder; give a file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    return text


# -- shared options --------------------------------------------------------------------------------------------------


def add_model_args(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    p.add_argument("--model", "-m", required=required, help="checkpoint folder, hub id, or a name from `siglite list`")
    p.add_argument("--engine", default=None,
                   help="torch, cuda, onnxruntime, openvino (default: the exported folder's own, else torch)")
    p.add_argument("--device", type=device, default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--precision", default=None, help="torch: float32 (default), bfloat16, float16; cuda: bfloat16 "
                                                     "(default), float16, fp8, fp8-static, fp8-fast")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")


def add_format_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=["table", "json"], default="table", help="output format (default: table)")


def add_overwrite_arg(p: argparse.ArgumentParser, what: str = "output") -> None:
    p.add_argument("--overwrite", action="store_true", help=f"replace an existing {what} (refused by default)")


def add_quiet_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", "-q", action="store_true",
                   help="no progress bars (they are also off when stderr is not a terminal)")


def add_batch_size_arg(p: argparse.ArgumentParser, default: int | None = None, help: str | None = None) -> None:
    p.add_argument("--batch-size", type=positive_int, default=default,
                   help=help or "images or texts per forward pass (default: 32)")


MAX_NUM_PATCHES_HELP = ("SigLIP 2 NaFlex models: the patch budget per image (default: an exported folder's, else the "
                        "checkpoint's: 256 for the hub checkpoints, evaluated at 256, 576, 784, 1024); an error for "
                        "other models")


def add_max_num_patches_arg(p: argparse.ArgumentParser, help: str = MAX_NUM_PATCHES_HELP) -> None:
    """--max-num-patches N (a positive int, checked where parsed): the NaFlex patch budget."""
    p.add_argument("--max-num-patches", type=positive_int, default=None, metavar="N", help=help)


def load_model(args):
    import siglite

    model = siglite.load(args.model, engine=args.engine, device=args.device, dtype=args.precision,
                         revision=args.revision)
    return model.set_patch_budget(getattr(args, "max_num_patches", None))


def check_out_file(args, path: str | None, flag: str = "--out") -> None:
    """Checks an output file option before the work (see `siglite.fileio.check_output_file`)."""
    if path:
        from ..fileio import check_output_file

        check_output_file(path, overwrite=getattr(args, "overwrite", False), flag=flag)


def progress_bar(args, total: int | None, desc: str, unit: str = "it", **kw):
    """A progress callable (tqdm) honouring --quiet and a non-terminal stderr; use as a context manager."""
    from ..progress import bar

    return bar(total, desc, unit, quiet=getattr(args, "quiet", False), **kw)


# -- output ----------------------------------------------------------------------------------------------------------


def emit(rows, fmt: str, *, columns: list[str] | None = None) -> None:
    """Print records as an aligned table or as JSON (one document)."""
    if fmt == "json":
        json.dump(rows, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return
    if not rows:
        return
    columns = columns or list(rows[0])
    cells = [[_cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def _cell(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def warn(args, message: str) -> None:
    """One line on stderr, in the same shape as errors."""
    print(f"siglite {args.command}: {message}", file=sys.stderr)


# -- the exit-code convention ---------------------------------------------------------------------------------------


def error_line(e: BaseException) -> str:
    """One line for any exception: OS errors as 'path: reason', others their first message line."""
    if isinstance(e, OSError) and e.strerror:
        where = e.filename if e.filename is not None else ""
        return f"{where}: {e.strerror.lower()}" if where else e.strerror.lower()
    from ..errors import SigliteError

    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, (SigliteError, ValueError)):
        return text or type(e).__name__
    # Anything else is unexpected: still one line, naming the type so a bug report has something to go on.
    return f"{type(e).__name__}: {text} (SIGLITE_DEBUG=1 shows the traceback)" if text else type(e).__name__


def run_command(args) -> int:
    """Runs ``args.run(args)`` under the exit-code convention above."""
    name = f"siglite {args.command}"
    try:
        code = args.run(args) or EXIT_OK
        sys.stdout.flush()  # a closed pipe shows here, inside the handler
        return code
    except KeyboardInterrupt:
        hint = getattr(args, "interrupt_hint", None)
        print(f"\n{name}: interrupted{'; ' + hint if hint else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except Exception as e:  # noqa: BLE001 - the convention: one line, never a traceback unless asked
        if os.environ.get("SIGLITE_DEBUG"):
            traceback.print_exc()
        print(f"{name}: error: {error_line(e)}", file=sys.stderr)
        return EXIT_ERROR


def _silence_stdout() -> None:
    # Python flushes stdout again at exit, which would raise a second BrokenPipeError (and print it); point the file
    # descriptor at /dev/null instead, as the Python docs advise for SIGPIPE.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass



def check_output_folder(args, path: str, *, markers: tuple[str, ...] = (), what: str = "output") -> None:
    """Checks an output folder option before the work (see `siglite.fileio.check_output_dir`); --overwrite replaces
    only a folder holding one of `markers` (what the command writes)."""
    from ..fileio import check_output_dir

    check_output_dir(path, overwrite=getattr(args, "overwrite", False), markers=markers, what=what)


def add_layer_args(p: argparse.ArgumentParser, what: str = "the tokens") -> None:
    """--layer K [K2 ...] and --post-norm: VLM feature taps (transformers hidden_states numbering)."""
    p.add_argument("--layer", type=int, nargs="+", default=None, metavar="K",
                   help=f"{what} of hidden_states[K] instead of last_hidden_state: 0 = embeddings, K = output of "
                        "block K, negative from the end (-2: LLaVA/Prismatic), no final LayerNorm; several K are "
                        "concatenated on the feature axis. Blocks after K are not computed")
    p.add_argument("--post-norm", action="store_true", help="apply the tower's final LayerNorm to the --layer tokens")


def layer_value(args) -> int | list[int] | None:
    """--layer as the library takes it: None, one int, or a list."""
    layer = getattr(args, "layer", None)
    return None if layer is None else (layer[0] if len(layer) == 1 else list(layer))
