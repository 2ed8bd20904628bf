"""Regenerate README's performance table: every importable siglite engine at each precision it declares, against the
transformers reference, on random weights at a real architecture's shape.

    python benchmarks/readme_table.py                      # print the markdown table
    python benchmarks/readme_table.py --write-readme       # replace the block between the bench markers in README.md

Engines are taken from `siglite.engines.base.ENGINES`; an engine module may declare the precisions it supports as
`PRECISIONS = ("float32", "int8", ...)` (default: float32 only), so new engines join the table without edits here.
Pairs that cannot load on this machine (missing extra, no GPU, ...) are skipped with a note on stderr.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import platform
import re
import sys
from pathlib import Path

import torch

from siglite.engines.base import ENGINES, engine_module
from siglite.errors import SigliteError
from siglite.tasks.bench import add_ratios, bench_spec, markdown_table, write_records

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
README = Path(__file__).resolve().parents[1] / "README.md"


def available_engines(precisions: list[str] | None) -> list[tuple[str, list[str]]]:
    """(engine, precisions) for every engine whose module imports here."""
    out = []
    for name in ENGINES:
        try:
            module = engine_module(name)
        except SigliteError as e:
            print(f"skipping engine {name}: {e}", file=sys.stderr)
            continue
        out.append((name, precisions or list(getattr(module, "PRECISIONS", ("float32",)))))
    return out


def describe_machine(device: str | None) -> str:
    if torch.cuda.is_available() and (device is None or device.startswith("cuda")):
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"


def run(args) -> str:
    records = []
    for engine, precisions in available_engines(args.precisions):
        baseline = "transformers" if engine == "torch" else None  # one reference run per precision is enough
        recs = bench_spec(args.spec, engines=[engine], precisions=precisions, batch_sizes=args.batch_sizes,
                          modes=args.mode, iters=args.iters, warmup=args.warmup, device=args.device,
                          baseline=baseline, threads=args.threads, skip_unavailable=True)
        records += recs
    add_ratios(records)  # engines timed without the baseline get their ratio from the torch run's reference
    if args.out:
        write_records(records, args.out)
    order = {e: i for i, e in enumerate([*ENGINES, "transformers"])}
    records.sort(key=lambda r: (r["mode"], r["batch_size"], order.get(r["engine"], 99), r["precision"]))
    note = (f"{args.spec} (random weights, vision tower), {records[0]['image_size'] if records else ''} input, "
            f"{describe_machine(args.device)}, torch {torch.__version__}, {args.iters} iterations after "
            f"{args.warmup} warm-up, {datetime.date.today()}. Regenerate: `python benchmarks/readme_table.py "
            f"--write-readme`.")
    return f"{markdown_table(records)}\n\n{note}"


def write_readme(table: str, path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise SigliteError(f"{path}: no {START} ... {END} block to replace")
    new = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: f"{START}\n{table}\n{END}", text, flags=re.S)
    path.write_text(new, encoding="utf-8")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default="siglip-base-patch16-224", help="architecture (default: %(default)s)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--precisions", nargs="+", default=None,
                   help="override every engine's precisions (default: each engine's PRECISIONS, else float32)")
    p.add_argument("--mode", nargs="+", choices=["model", "e2e"], default=["model"])
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="also write the records (.json or .csv)")
    p.add_argument("--write-readme", nargs="?", const=str(README), default=None, metavar="README",
                   help="replace the block between the bench markers (default file: %(const)s)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        table = run(args)
        if args.write_readme:
            write_readme(table, Path(args.write_readme))
    except SigliteError as e:
        print(f"readme_table: error: {e}", file=sys.stderr)
        return 1
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
