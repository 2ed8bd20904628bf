"""Options and output shared by the commands: --model/--engine/--device/--precision, tables and JSON."""

from __future__ import annotations

import argparse
import json
import sys


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", required=True, help="checkpoint folder, hub id, or a name from `siglite list`")
    p.add_argument("--engine", default=None,
                   help="torch, cuda, onnxruntime, openvino (default: the exported folder's own, else torch)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--precision", default=None, help="torch: float32 (default), bfloat16, float16; cuda: bfloat16 (default), float16, fp8, fp8-static, fp8-fast")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")


def add_format_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=["table", "json"], default="table", help="output format (default: table)")


def load_model(args):
    import siglite

    return siglite.load(args.model, engine=args.engine, device=args.device, dtype=args.precision,
                        revision=args.revision)


def emit(rows: list[dict], fmt: str, *, columns: list[str] | None = None) -> None:
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
