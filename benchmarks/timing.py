"""Round-robin timing shared by the benchmarks (every engine runs once in turn, so load from other processes hits
all of them alike), and the engine-vs-transformers speed table that clip_speed.py and naflex_speed.py print."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def interleaved(fns: dict, arg, rounds: int) -> dict[str, dict[str, list[float]]]:
    """Wall (`time.perf_counter`) and CPU (`time.process_time`, this process, all threads) seconds of each call of
    each callable on `arg`, `rounds` rounds after one warm-up call each: {name: {"wall": [...], "cpu": [...]}}."""
    for fn in fns.values():
        fn(arg)
    out: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            w, c = time.perf_counter(), time.process_time()
            fn(arg)
            out[name]["wall"].append(time.perf_counter() - w)
            out[name]["cpu"].append(time.process_time() - c)
    return out


def speed_records(fns: dict, batch, batch_size: int, rounds: int, threads: int, **fields) -> list[dict]:
    """Time `fns` (the first is the transformers baseline) round-robin on `batch`: one record per engine with its
    median wall time per batch and image, FPS, ratio to the baseline, and its pooled output's worst |diff| and
    minimum cosine against the baseline's; `fields` are added to every record."""
    from siglite.metrics import cosine_summary

    outputs = {name: fn(batch) for name, fn in fns.items()}
    ref = next(iter(outputs.values()))
    load = [os.getloadavg()[0]]
    times = {k: v["wall"] for k, v in interleaved(fns, batch, rounds).items()}
    load.append(os.getloadavg()[0])
    base = float(np.median(next(iter(times.values()))))
    records = []
    for name, t in times.items():
        s = float(np.median(t))
        records.append({**fields, "engine": name, "batch_size": batch_size, "ms_per_batch": 1e3 * s,
                        "ms_per_image": 1e3 * s / batch_size, "fps": batch_size / s, "ratio_vs_transformers": base / s,
                        "rounds_s": t, "worst_abs_diff_vs_transformers": float(np.abs(outputs[name] - ref).max()),
                        "embed_cosine_vs_transformers_min": cosine_summary(ref, outputs[name])["min"],
                        "loadavg_1min": load, "threads": threads})
    return records


def int8_summary(report: dict, quantize_s: float, calib: int, check: int) -> dict:
    """What the speed tables print of a `siglite quantize` report (vision tower)."""
    fid = report["fidelity"]["runtime"]
    return {"quantize_wall_s": quantize_s, "calib": calib, "check": check,
            "tokens_cosine_mean": fid["vision_hidden"]["mean"], "tokens_cosine_p1": fid["vision_hidden"]["p1"],
            "embed_cosine_mean": fid["vision_pooled"]["mean"], "embed_cosine_p1": fid["vision_pooled"]["p1"],
            "float32_layers": report["float32_layers"], "cpu_isa": report["cpu_isa"]["name"]}


def speed_table(records: list[dict], output: str) -> tuple[list[str], str]:
    """The markdown rows of `speed_records` (`output`: what the last column compares, e.g. "embeds"), and the load
    averages during the baseline's timing, per batch size."""
    lines = [(f"| engine | batch | ms / batch | ms / image | FPS | vs transformers fp32 | {output} vs transformers: "
              "worst \\|Δ\\|, min cosine |"), "|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['engine']} | {r['batch_size']} | {r['ms_per_batch']:.0f} | {r['ms_per_image']:.1f} "
                     f"| {r['fps']:.1f} | {r['ratio_vs_transformers']:.2f}× | "
                     f"{r['worst_abs_diff_vs_transformers']:.1e}, {r['embed_cosine_vs_transformers_min']:.5f} |")
    loads = ", ".join(f"batch {r['batch_size']} {r['loadavg_1min'][0]:.1f}→{r['loadavg_1min'][1]:.1f}"
                      for r in records if r["engine"].startswith("transformers"))
    return lines, loads


def add_speed_args(p, batches: list[int], json_name: str) -> None:
    """The options clip_speed.py and naflex_speed.py share."""
    p.add_argument("--batches", type=int, nargs="+", default=batches)
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per engine and batch (median reported)")
    p.add_argument("--calib", type=int, default=32, help="generated calibration images")
    p.add_argument("--check", type=int, default=16, help="held-out images the quantizer measures fidelity on")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=None, help="folder for the checkpoint and the INT8 model (default: temporary)")
    p.add_argument("--json", default=json_name, help="where to write the records")


def run_speed(args, run, markdown) -> int:
    """`run(args, work)` -> (records, int8 summary) in `--work` (or a temporary folder); writes `--json` and prints
    `markdown(records, summary)`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        records, quant = run(args, Path(args.work or tmp))
    Path(args.json).write_text(json.dumps({"records": records, "int8": quant}, indent=2) + "\n")
    print(markdown(records, quant))
    return 0
