"""INT8 on CPU: throughput and fidelity against the transformers reference, in one run.

At a real architecture's shape (base-224 by default) with random weights, and again with activation outlier channels
injected (`siglite.testing.inject_outliers`, the pattern trained ViTs show), it times the vision tower at one batch
size for: transformers fp32 (sdpa; the baseline), siglite torch fp32, ONNX Runtime fp32 and OpenVINO fp32 (an
export), and ONNX Runtime INT8 with siglite's recipe and with the plain dynamic conversion. Calls are interleaved
round by round, so load from other processes hits every engine alike; throughput is the median round.

Fidelity is measured against siglite torch fp32 on held-out synthetic images (not the calibration ones) with
`siglite.tasks.evaluate.fidelity` (per-image cosine of last_hidden_state flattened and of pooler_output, mean / min /
1%-low, zero-shot top-1 agreement over the 25 synthetic classes) and `text_fidelity`.

    python benchmarks/int8_fidelity_speed.py                  # markdown table on stdout, records in JSON
    python benchmarks/int8_fidelity_speed.py --variants outliers --calib 64 --rounds 5

Targets (issue 4): INT8 throughput >= 2.0x the baseline; last_hidden_state cosine mean >= 0.995 and 1%-low >= 0.99,
pooler_output cosine mean >= 0.995, on both variants.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from timing import interleaved  # benchmarks/timing.py (scripts run with benchmarks/ on sys.path)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # tokenizer_fixtures: a tokenizer made here, nothing downloaded

BAR = {"hidden_mean": 0.995, "hidden_p1": 0.99, "pooled_mean": 0.995, "speedup": 2.0}


def make_checkpoint(folder: Path, spec_name: str, outliers: bool, seed: int) -> Path:
    from tokenizer_fixtures import make_spiece_tokenizer

    from siglite.registry import get_spec
    from siglite.checkpoints import random_model, save_checkpoint
    from siglite.testing import inject_outliers

    spec = get_spec(spec_name)
    model = random_model(spec, seed=seed)
    if outliers:
        # 4..8 channels per LayerNorm, 50..100x (inject_outliers spreads each factor over 0.6..1.0 x scale)
        inject_outliers(model, channels=6, scale=100.0, seed=seed)
    save_checkpoint(model, folder, spec)
    make_spiece_tokenizer(folder, max_length=spec.text["max_position_embeddings"])
    return folder


def images(n: int, seed: int, size: int) -> tuple[list, list[int]]:
    from siglite.data.synthetic import generate

    samples = generate(n, seed, size)
    return [s.image for s in samples], [s.label for s in samples]


def run_variant(variant: str, args, work: Path) -> list[dict]:
    import siglite
    from siglite.export import export
    from siglite.tasks.quantize import quantize
    from siglite.tasks.bench import transformers_target
    from siglite.tasks.evaluate import fidelity, text_fidelity
    from siglite.data.synthetic import CLASSNAMES

    say = (lambda s: print(f"[{variant}] {s}", file=sys.stderr, flush=True))
    src = make_checkpoint(work / variant, args.model, variant == "outliers", args.seed)
    size = siglite.load(src).image_config.height
    calib_imgs, _ = images(args.calib + args.check, seed=100, size=size)
    eval_imgs, eval_labels = images(args.eval, seed=200, size=size)
    texts = [f"a photo of a {c}" for c in CLASSNAMES] + [f"{c} on a dark background" for c in CLASSNAMES]

    say("exporting fp32 ONNX")
    export(src, work / f"{variant}-onnx", "onnx")
    folders = {"siglite": work / f"{variant}-int8", "dynamic": work / f"{variant}-int8-dynamic"}
    quant_reports = {}
    for recipe in args.recipes:
        say(f"quantizing ({recipe}) on {args.calib} calibration images")
        t0 = time.perf_counter()
        quant_reports[recipe] = quantize(src, calib_imgs, folders[recipe], recipe=recipe, num_calib=args.calib,
                                         num_check=args.check, progress=say)
        quant_reports[recipe]["wall_s"] = time.perf_counter() - t0

    reference = siglite.load(src, device="cpu")
    candidates = {("siglite torch", "float32"): reference,
                  ("onnxruntime", "float32"): siglite.load(work / f"{variant}-onnx", engine="onnxruntime")}
    if not args.no_openvino:
        try:
            candidates[("openvino", "float32")] = siglite.load(work / f"{variant}-onnx", engine="openvino")
        except siglite.SigliteError as e:
            say(f"skipping openvino: {e}")
    for recipe in args.recipes:
        candidates[("onnxruntime", f"int8 ({recipe})")] = siglite.load(folders[recipe], engine="onnxruntime")

    say(f"timing batch {args.batch}, {args.rounds} interleaved rounds")
    baseline = transformers_target(src, "float32", "cpu")
    pixels = np.random.default_rng(0).standard_normal((args.batch, 3, size, size)).astype(np.float32)
    fns = {("transformers (sdpa)", "float32"): baseline.run_pixels}
    fns.update({k: (lambda px, m=m: m.engine.encode_image(px)) for k, m in candidates.items()})
    load_before = os.getloadavg()[0]
    seconds = {k: float(np.median(v["wall"])) for k, v in interleaved(fns, pixels, args.rounds).items()}
    load_after = os.getloadavg()[0]
    base = seconds[("transformers (sdpa)", "float32")]

    records = []
    for (engine, precision), s in seconds.items():
        rec = {"variant": variant, "model": args.model, "engine": engine, "precision": precision,
               "batch_size": args.batch, "throughput_img_s": args.batch / s, "ratio_vs_transformers": base / s,
               "loadavg_1min": [load_before, load_after]}
        model = candidates.get((engine, precision))
        if model is not None and model is not reference:
            say(f"fidelity of {engine} {precision}")
            fid = fidelity(reference, model, eval_imgs, eval_labels, CLASSNAMES, batch_size=args.batch)
            rec.update({k: fid[k] for k in ("hidden_cosine_mean", "hidden_cosine_min", "hidden_cosine_p1",
                                            "pooled_cosine_mean", "pooled_cosine_min", "top1_agreement")})
            rec.update({k: v for k, v in text_fidelity(reference, model, texts).items() if k.startswith("text_cos")})
            if "int8" in precision:
                recipe = precision[len("int8 ("):-1]
                rep = quant_reports[recipe]
                rec.update({"float32_layers": rep["float32_layers"], "quantize_wall_s": rep["wall_s"],
                            "n_linear": len(rep["layers"])})
        records.append(rec)
    return records


def verdict(rec: dict) -> str:
    if "int8" not in rec["precision"]:
        return ""
    ok = (rec["ratio_vs_transformers"] >= BAR["speedup"] and rec["hidden_cosine_mean"] >= BAR["hidden_mean"]
          and rec["hidden_cosine_p1"] >= BAR["hidden_p1"] and rec["pooled_cosine_mean"] >= BAR["pooled_mean"])
    return "meets" if ok else "misses"


def markdown(records: list[dict]) -> str:
    def f(rec, key, digits=4):
        v = rec.get(key)
        return "" if v is None else f"{v:.{digits}f}"

    lines = ["| weights | engine | precision | img/s | vs transformers | hidden cos mean | hidden cos min "
             "| hidden cos 1%-low | pooled cos mean | text cos mean | top-1 agree | bar |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['variant']} | {r['engine']} | {r['precision']} | {r['throughput_img_s']:.2f} "
                     f"| {r['ratio_vs_transformers']:.2f}x | {f(r, 'hidden_cosine_mean')} "
                     f"| {f(r, 'hidden_cosine_min')} | {f(r, 'hidden_cosine_p1')} | {f(r, 'pooled_cosine_mean')} "
                     f"| {f(r, 'text_cosine_mean')} | {f(r, 'top1_agreement', 3)} | {verdict(r)} |")
    first = records[0]
    lines += ["", f"{first['model']}, random weights (\"outliers\": 6 channels per LayerNorm at 60-100x), batch "
                  f"{first['batch_size']}, {torch.get_num_threads()} CPU threads; fidelity against siglite torch "
                  f"float32 on held-out synthetic images. Load average during timing: "
                  + ", ".join(f"{r['variant']} {r['loadavg_1min'][0]:.1f}-{r['loadavg_1min'][1]:.1f}"
                              for r in records if r["engine"].startswith("transformers")) + "."]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="siglip-base-patch16-224", help="architecture from `siglite list`")
    p.add_argument("--variants", nargs="+", default=["random", "outliers"], choices=["random", "outliers"])
    p.add_argument("--recipes", nargs="+", default=["siglite", "dynamic"], choices=["siglite", "dynamic"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per engine (median reported)")
    p.add_argument("--calib", type=int, default=128, help="calibration images")
    p.add_argument("--check", type=int, default=16, help="held-out images the quantizer measures itself on")
    p.add_argument("--eval", type=int, default=64, help="held-out images for the fidelity columns")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-openvino", action="store_true")
    p.add_argument("--work", default=None, help="folder for checkpoints and exports (default: a temporary one)")
    p.add_argument("--json", default="int8_fidelity_speed.json", help="where to write the records")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        records = [r for v in args.variants for r in run_variant(v, args, work)]
    Path(args.json).write_text(json.dumps(records, indent=2) + "\n")
    print(markdown(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
