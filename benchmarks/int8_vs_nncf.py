"""siglite INT8 against the user's obvious alternative, OpenVINO + NNCF, in one interleaved run (issue 15).

Three kinds of random weights at a real architecture's shape (`--model`, base-224 SigLIP by default, or e.g.
clip-vit-base-patch32; `--layers` cuts the depth), for one tower (`--tower vision`, the default, or `--tower text`):
"random"; "outliers" (`siglite.testing.inject_outliers`: 6 LayerNorm-output channels per block at 60-100x, float
function unchanged); "massive" (`siglite.testing.massive_fc2_inputs`: a few tokens at fc2's input of the middle blocks
450-1900x the median, the max/median ratio printed). Each is quantized

* by siglite: `siglite.tasks.quantize.quantize` (served by ONNX Runtime), and
* by NNCF: `siglite export --graph-format openvino`, then `nncf.quantize(model, nncf.Dataset(...),
  model_type=nncf.ModelType.TRANSFORMER, subset_size=N)` on the same N calibration images / texts (served by OpenVINO),

and timed round-robin with transformers fp32 (sdpa) at one batch size: wall time (`time.perf_counter`) and CPU time
of this process (`time.process_time`, all threads), median over rounds. The transformers class matches the family and
tower and returns what siglite returns as pooled (SiglipVisionModel / SiglipTextModel pooler_output,
CLIPVisionModelWithProjection image_embeds, CLIPTextModelWithProjection text_embeds; the max |diff| against siglite
fp32 is recorded). Fidelity is against siglite torch fp32 on held-out inputs (not the calibration ones): token cosine
= cosine of each last_hidden_state token vector over all images x tokens (mean / min / 1%-low = 1st percentile);
pooled = per-input cosine of the pooled output (mean / min / 1%-low).

Vision: the architecture's image size (`siglite.registry` spec), generated images (`siglite.data.synthetic`).
Text (`--tower text`): a text-only checkpoint (SiglipTextModel / CLIPTextModelWithProjection layout) with a
tokenizer trained on the fly by the test fixtures (tests/tokenizer_fixtures.py SentencePiece for SigLIP,
tests/clip_fixtures.py BPE for CLIP), texts from their synthetic corpus (calibration from its start, held-out from its
end; `--images` / `--check` / `--eval` count texts); timing is `encode_text` on a batch of `--batch` texts. The
exported text graphs output the pooled embedding only, so text has no token cosine; its pooled 1%-low is held to the
token 1%-low bar.

    pip install 'siglite[bench-int8]'     # nncf, used only here
    python benchmarks/int8_vs_nncf.py --layers 4 --images 64 --rounds 3   # a bounded run (minutes)
    python benchmarks/int8_vs_nncf.py                                     # full base-224 depth (much longer)
    python benchmarks/int8_vs_nncf.py --model clip-vit-base-patch32       # CLIP ViT-B/32 vision tower
    python benchmarks/int8_vs_nncf.py --tower text                        # SigLIP base text tower
    python benchmarks/int8_vs_nncf.py --tower text --model clip-vit-base-patch32
    python benchmarks/int8_vs_nncf.py --images 128 --kinds random --floor   # + one float32 forward's CPU time

Targets (issue 15): siglite INT8 >= 1.1x NNCF INT8 throughput (wall and CPU), token cosine mean >= 0.999 and 1%-low
>= 0.998 (text: pooled 1%-low >= 0.998), pooled mean >= 0.999, on all three kinds, every linear layer INT8;
quantization <= 120 s of CPU time for base-224 with 64-128 images.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from timing import interleaved  # benchmarks/timing.py (scripts run with benchmarks/ on sys.path)

BAR = {"speed_vs_nncf": 1.1, "token_mean": 0.999, "token_p1": 0.998, "pooled_mean": 0.999, "quant_cpu_s": 120.0}
KINDS = ("random", "outliers", "massive")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def timed(fn):
    """Run fn(); returns (result, wall s, CPU s of this process)."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def family_of(model_name: str) -> str:
    from siglite.registry import get_spec

    return get_spec(model_name).family


def build(kind: str, folder: Path, args, probe_inputs, say) -> dict:
    """Save a random-weight checkpoint of `kind` into `folder`: the vision tower alone, or (``--tower text``) the text
    tower alone with a tokenizer trained on the fly. `probe_inputs`: what the massive builder runs the tower on."""
    from siglite.checkpoints import random_model, save_checkpoint
    from siglite.registry import get_spec
    from siglite.testing import inject_outliers, massive_fc2_inputs

    spec = get_spec(args.model)
    if args.tower == "vision":
        model = random_model(spec, seed=args.seed, vision_layers=args.layers, text=False).eval()
    else:  # random_model always builds a vision tower: a 1-block one, then dropped (a text-only checkpoint)
        model = random_model(spec, seed=args.seed, vision_layers=1, text_layers=args.layers).eval()
        model.vision = None
    info: dict = {}
    if kind == "outliers":
        inject_outliers(model, channels=6, scale=100.0, seed=args.seed)
    elif kind == "massive":
        ratios = massive_fc2_inputs(model, probe_inputs, seed=args.seed, tower=args.tower)
        info["max_over_median"] = ratios
        say(f"fc2 input max/median |x| per block (on calibration {args.tower} inputs): "
            + ", ".join(f"block {b}: {r:.0f}x" for b, r in ratios.items()))
    save_checkpoint(model, folder, spec)
    if args.tower == "text":
        write_text_side(folder, spec)
    return info


def write_text_side(folder: Path, spec) -> None:
    """A text-only checkpoint as transformers' *TextModel saves it, plus a tokenizer in the family's hub layout, trained
    on the fly by the test fixtures (tests/tokenizer_fixtures.py, tests/clip_fixtures.py; no downloads)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from clip_fixtures import make_clip_tokenizer
    from tokenizer_fixtures import make_spiece_tokenizer

    length = spec.text_config.max_position_embeddings
    if spec.family == "clip":
        make_clip_tokenizer(folder, max_length=length)
    else:
        make_spiece_tokenizer(folder, max_length=length)


def calibration_texts() -> list[str]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tokenizer_fixtures import training_corpus

    return list(training_corpus())


def nncf_quantize(src: Path, work: Path, tower: str, calib: list[dict], say) -> tuple[Path, float, float]:
    """Export to OpenVINO IR, quantize the tower with NNCF (TRANSFORMER preset) on `calib` (one feed dict per
    calibration sample, keyed by the graph's input names); returns (folder, wall, CPU)."""
    import nncf
    import openvino as ov

    from siglite.export import export

    ov_dir = work / "openvino"
    export(src, ov_dir, "openvino")
    out = work / "nncf-int8"
    shutil.copytree(ov_dir, out)
    xml = next(out.glob(f"{tower}*.xml"))
    core = ov.Core()
    model = core.read_model(str(xml))
    names = {i.any_name for i in model.inputs}
    if names != set(calib[0]):
        raise SystemExit(f"{xml}: inputs {sorted(names)}, calibration feeds {sorted(calib[0])}")

    def run():
        return nncf.quantize(model, nncf.Dataset(calib, lambda x: x),
                             model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calib))

    say(f"NNCF quantizing on {len(calib)} calibration {'images' if tower == 'vision' else 'texts'}")
    q, wall, cpu = timed(run)
    xml.unlink()
    xml.with_suffix(".bin").unlink()
    ov.save_model(q, str(xml), compress_to_fp16=False)
    return out, wall, cpu


def cosine(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-30)


def token_fidelity(ref: tuple[np.ndarray, np.ndarray | None], got: tuple[np.ndarray, np.ndarray | None]) -> dict:
    """Cosine summaries of (pooled, tokens) against the reference; tokens may be None (text graphs: pooled only)."""
    pooled = cosine(ref[0], got[0])
    out = {"pooled_cos_mean": float(pooled.mean()), "pooled_cos_min": float(pooled.min()),
           "pooled_cos_p1": float(np.percentile(pooled, 1))}
    if ref[1] is not None and got[1] is not None:
        tok = cosine(ref[1].reshape(-1, ref[1].shape[-1]), got[1].reshape(-1, got[1].shape[-1]))
        out.update({"token_cos_mean": float(tok.mean()), "token_cos_min": float(tok.min()),
                    "token_cos_p1": float(np.percentile(tok, 1))})
    return out


# Inputs of either tower as one tuple of numpy arrays: (pixels,) or (ids, mask-or-None).

def take(inputs: tuple, i: int, j: int) -> tuple:
    return tuple(None if x is None else x[i:j] for x in inputs)


def count(inputs: tuple) -> int:
    return len(inputs[0])


def encode(engine, tower: str, inputs: tuple, batch: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(pooled, tokens or None) of a siglite engine over `inputs`, `batch` at a time."""
    outs = []
    for i in range(0, count(inputs), batch):
        part = take(inputs, i, i + batch)
        outs.append(engine.encode_image(part[0], tokens=True) if tower == "vision"
                    else (engine.encode_text(*part), None))
    return (np.concatenate([o[0] for o in outs]),
            None if outs[0][1] is None else np.concatenate([o[1] for o in outs]))


def call(engine, tower: str):
    """The timed call of a siglite engine: pooled output only, as a user would ask for it."""
    if tower == "vision":
        return lambda inp: engine.encode_image(inp[0])
    return lambda inp: engine.encode_text(*inp)


def transformers_baseline(folder: Path, family: str, tower: str):
    """transformers fp32 (sdpa) of the right class for the family and tower, returning what siglite returns as pooled:
    SigLIP pooler_output (SiglipVisionModel / SiglipTextModel); CLIP image_embeds / text_embeds (the projected
    embeddings, CLIPVisionModelWithProjection / CLIPTextModelWithProjection, as benchmarks/clip_speed.py)."""
    import transformers

    cls, field = {("clip", "vision"): ("CLIPVisionModelWithProjection", "image_embeds"),
                  ("clip", "text"): ("CLIPTextModelWithProjection", "text_embeds"),
                  ("siglip", "vision"): ("SiglipVisionModel", "pooler_output"),
                  ("siglip", "text"): ("SiglipTextModel", "pooler_output")}[(
                      "clip" if family == "clip" else "siglip", tower)]
    model = getattr(transformers, cls).from_pretrained(str(folder), attn_implementation="sdpa",
                                                       dtype=torch.float32).eval()

    @torch.inference_mode()
    def run(inp: tuple) -> np.ndarray:
        if tower == "vision":
            out = model(pixel_values=torch.from_numpy(inp[0]))
        else:
            out = model(input_ids=torch.from_numpy(inp[0]),
                        attention_mask=None if inp[1] is None else torch.from_numpy(inp[1]))
        return getattr(out, field).numpy()

    return f"transformers {cls}", run


def prepare_inputs(model, tower: str, samples: list) -> tuple:
    """Images -> (pixels,) with the checkpoint's image settings; texts -> (ids, mask or None) with its tokenizer."""
    from siglite.preprocess.image import preprocess_batch

    if tower == "vision":
        return (preprocess_batch(samples, model.image_config, "resize")[0],)
    ids, mask = model.tokenize(samples)
    return (np.asarray(ids, np.int64), None if mask is None else np.asarray(mask, np.int64))


def feeds(tower: str, inputs: tuple) -> list[dict]:
    """One graph feed per sample, as siglite's graph engines build them (`siglite.engines.graph`): the text graphs
    take input_ids and attention_mask (all ones when the tokenizer returns no mask)."""
    from siglite.export import INPUTS

    out = []
    for i in range(count(inputs)):
        part = take(inputs, i, i + 1)
        if tower == "text" and part[1] is None:
            part = (part[0], np.ones_like(part[0]))
        out.append(dict(zip(INPUTS[tower], (np.ascontiguousarray(x) for x in part))))
    return out


def run_kind(kind: str, args, work: Path, calib: list, held: list, floor: bool = False) -> dict:
    """Build, quantize both ways, measure fidelity and time one kind of weights. `calib`: images or texts, the first
    args.images fit both quantizers, the next args.check are siglite's own check set; `held`: the fidelity set;
    `floor`: also time one float32 forward over `calib` (`float32_floor`)."""
    import siglite
    from siglite.tasks.quantize import quantize

    tower = args.tower
    say = (lambda s: print(f"[{tower} {kind}] {s}", file=sys.stderr, flush=True))
    work.mkdir(parents=True, exist_ok=True)
    src = work / "fp32"
    rec: dict = {"kind": kind, "model": args.model, "tower": tower, "layers": args.layers}
    probe_inputs = None
    if kind == "massive":  # the builder needs model inputs: preprocess/tokenize with a plain checkpoint's settings
        build("random", work / "probe", args, None, say)
        # 8 images (1568 tokens at base-224) or 24 texts (1536 positions at SigLIP's 64)
        probe_np = prepare_inputs(siglite.load(work / "probe", device="cpu"), tower,
                                  calib[:8 if tower == "vision" else 24])
        probe_inputs = tuple(torch.from_numpy(x) for x in probe_np if x is not None)
        probe_inputs = probe_inputs[0] if len(probe_inputs) == 1 else probe_inputs
        shutil.rmtree(work / "probe")
    rec.update(build(kind, src, args, probe_inputs, say))
    reference = siglite.load(src, device="cpu")
    pool = prepare_inputs(reference, tower, calib)  # calibration (fit) inputs then the quantizer's check ones
    calib_in = take(pool, 0, args.images)
    eval_in = prepare_inputs(reference, tower, held)
    if kind == "massive":
        # text: massive positions are sparser per input (a few (token, position) pairs), so look at more of them
        rec["max_over_median_heldout"] = fc2_ratio(reference, tower, take(eval_in, 0, 8 if tower == "vision" else 32))
        say("fc2 input max/median |x| per block (held-out): "
            + ", ".join(f"block {b}: {r:.0f}x" for b, r in rec["max_over_median_heldout"].items()))

    what = "images" if tower == "vision" else "texts"
    say(f"siglite quantize on {args.images} calibration {what} (+{args.check} held out)")
    if tower == "vision":
        kw = {"num_calib": args.images}
        images = calib
    else:
        texts_file = work / "calib_texts.txt"
        texts_file.write_text("\n".join(calib[:args.images + args.check]) + "\n")
        kw = {"calib_texts": str(texts_file), "num_texts": args.images}
        images = None
    rep, wall, cpu = timed(lambda: quantize(src, images, work / "siglite-int8", num_check=args.check,
                                            sensitivity_samples=args.sensitivity_samples, progress=say, **kw))
    rec["siglite_quant"] = {"wall_s": wall, "cpu_s": cpu, "float32_layers": rep["float32_layers"],
                            "n_linear": len(rep["layers"]), "cpu_isa": rep["cpu_isa"]["name"],
                            "weight_dtype": rep["cpu_isa"]["weight_dtype"], "timings_s": rep["timings_s"],
                            "float_channels": {lp["name"]: lp["float_channels"] for lp in rep["layers"]
                                               if lp.get("float_channels")},
                            "calibration": rep["calibration"], "runtime_fidelity": rep["fidelity"]["runtime"]}
    if floor:
        rec["float32_forward_cpu_s"] = float32_floor(src, work, tower, reference, pool, args.batch, say)
    engines = {"siglite int8 (onnxruntime)": siglite.load(work / "siglite-int8", engine="onnxruntime").engine}
    if not args.no_nncf:
        folder, wall, cpu = nncf_quantize(src, work, tower, feeds(tower, calib_in), say)
        rec["nncf_quant"] = {"wall_s": wall, "cpu_s": cpu}
        engines["NNCF int8 (openvino)"] = siglite.load(folder, engine="openvino").engine

    say(f"fidelity on {count(eval_in)} held-out {what}")
    ref_out = encode(reference.engine, tower, eval_in, args.batch)
    rec["fidelity"] = {name: token_fidelity(ref_out, encode(e, tower, eval_in, args.batch))
                       for name, e in engines.items()}

    say(f"timing batch {args.batch}, {args.rounds} interleaved rounds")
    base_name, baseline = transformers_baseline(src, family_of(args.model), tower)
    batch_in = take(eval_in, 0, args.batch)
    # like with like: the baseline computes what siglite's fp32 engine returns as pooled
    rec["baseline"] = {"class": base_name, "pooled_max_abs_diff_vs_siglite_fp32":
                       float(np.abs(baseline(batch_in) - ref_out[0][:args.batch]).max())}
    say(f"{base_name} vs siglite torch fp32: pooled max |diff| "
        f"{rec['baseline']['pooled_max_abs_diff_vs_siglite_fp32']:.2e}")
    fns = {BASELINE: baseline}
    fns.update({k: call(e, tower) for k, e in engines.items()})
    load0 = os.getloadavg()
    rec["seconds"] = {k: {"wall": float(np.median(v["wall"])), "cpu": float(np.median(v["cpu"]))}
                      for k, v in interleaved(fns, batch_in, args.rounds).items()}
    rec["loadavg"] = [load0, os.getloadavg()]
    rec["batch"] = count(batch_in)
    return rec


BASELINE = "transformers fp32 (sdpa)"


def float32_floor(src: Path, work: Path, tower: str, reference, inputs: tuple, batch: int, say) -> dict:
    """CPU seconds of one float32 forward over `inputs` (the calibration and check inputs a quantizer reads), in
    siglite's torch engine (what `siglite quantize` gathers its statistics and reference outputs with) and in ONNX
    Runtime on the exported float32 graph (the fastest float32 runtime measured here): a floor under the quantization
    time of any recipe that calibrates on the float model's activations."""
    import siglite
    from siglite.export import export

    export(src, work / "onnx-fp32")
    runtimes = {"siglite torch": reference.engine,
                "onnxruntime": siglite.load(work / "onnx-fp32", engine="onnxruntime").engine}
    out = {}
    for name, engine in runtimes.items():
        encode(engine, tower, take(inputs, 0, batch), batch)  # warm-up
        out[name] = timed(lambda e=engine: encode(e, tower, inputs, batch))[2]
    say(f"float32 forward over {count(inputs)} inputs: "
        + ", ".join(f"{k} {v:.0f} CPU s" for k, v in out.items()))
    return out


def fc2_ratio(model, tower: str, inputs: tuple) -> dict[int, float]:
    """max / median |fc2 input| per block whose ratio exceeds 50 (the massive ones), measured on `inputs`."""
    from siglite.testing import fc2_input_ratios

    net = model.engine.model if hasattr(model.engine, "model") else None
    if net is None:
        return {}
    args = tuple(torch.from_numpy(x) for x in inputs if x is not None)
    with torch.inference_mode():
        ratios = fc2_input_ratios(net, args if len(args) > 1 else args[0], tower=tower)
    return {i: r for i, r in ratios.items() if r > 50}


def markdown(records: list[dict], args) -> str:
    unit = "img/s" if args.tower == "vision" else "texts/s"
    head = (f"| weights | engine | {unit} wall | {unit} CPU | vs transformers wall / CPU | vs NNCF wall / CPU "
            "| token cos mean / min / 1%-low | pooled cos mean / min / 1%-low | quantization wall / CPU s |")
    lines = [head, "|---" * 9 + "|"]
    for r in records:
        b, s = r["batch"], r["seconds"]
        base, nncf = s[BASELINE], s.get("NNCF int8 (openvino)")
        for name, t in s.items():
            fid = r.get("fidelity", {}).get(name)
            q = r["siglite_quant"] if name.startswith("siglite") else r.get("nncf_quant") if name.startswith("NNCF") \
                else None
            vs_nncf = (f"{nncf['wall'] / t['wall']:.2f}x / {nncf['cpu'] / t['cpu']:.2f}x"
                       if nncf and name.startswith("siglite") else "")
            tok_s = (f"{fid['token_cos_mean']:.5f} / {fid['token_cos_min']:.5f} / {fid['token_cos_p1']:.5f}"
                     if fid and "token_cos_mean" in fid else "n/a" if fid else "")
            pooled_s = (f"{fid['pooled_cos_mean']:.5f} / {fid['pooled_cos_min']:.5f} / {fid['pooled_cos_p1']:.5f}"
                        if fid else "")
            q_s = f"{q['wall_s']:.0f} / {q['cpu_s']:.0f}" if q else ""
            lines.append(f"| {r['kind']} | {name} | {b / t['wall']:.2f} | {b / t['cpu']:.2f} "
                         f"| {base['wall'] / t['wall']:.2f}x / {base['cpu'] / t['cpu']:.2f}x | {vs_nncf} | {tok_s} "
                         f"| {pooled_s} | {q_s} |")
    first = records[0]
    sq = first["siglite_quant"]
    what = "images" if args.tower == "vision" else "texts"
    layers = args.layers or "all"
    notes = [f"{args.model} {args.tower} tower ({layers} layers), random weights; baseline "
             f"{first['baseline']['class']} fp32, sdpa (pooled max |diff| vs siglite torch fp32 "
             f"{first['baseline']['pooled_max_abs_diff_vs_siglite_fp32']:.1e}); batch {first['batch']}, "
             f"{torch.get_num_threads()} threads, {args.rounds} interleaved rounds (median); {args.images} "
             f"calibration {what} (+{args.check} held out by siglite), fidelity vs siglite torch fp32 on "
             f"{args.eval} held-out {what}. CPU: {cpu_name()}, siglite weights for {sq['cpu_isa']} "
             f"(8-bit, stored {sq['weight_dtype']}). Load average (1/5/15 min) at timing: "
             + "; ".join(f"{r['kind']} {'/'.join(f'{x:.1f}' for x in r['loadavg'][0])}" for r in records) + "."]
    if args.tower == "text":
        notes.append("text: the exported text graphs output pooler_output only (SigLIP pooler_output, CLIP "
                     "text_embeds), so there is no token cosine; the pooled 1%-low is held to the token 1%-low bar. "
                     "Texts: the test fixtures' synthetic corpus, tokenized by a tokenizer trained on it (padded to "
                     f"{'77, with mask' if family_of(args.model) == 'clip' else '64, no mask'}).")
    for r in records:
        if "float32_forward_cpu_s" in r:
            notes.append(f"one float32 forward over the {args.images + args.check} calibration + check {what} "
                         "(the floor under a quantization that calibrates in float32): "
                         + ", ".join(f"{k} {v:.0f} CPU s" for k, v in r["float32_forward_cpu_s"].items()))
        if r["kind"] == "massive":
            notes.append("massive: fc2 input max/median |x| on held-out inputs: "
                         + ", ".join(f"block {b} {v:.0f}x" for b, v in r.get("max_over_median_heldout", {}).items()))
        sq = r["siglite_quant"]
        fl, fc = sq["float32_layers"], sq.get("float_channels", {})
        notes.append(f"{r['kind']}: siglite kept {len(fl)}/{sq['n_linear']} linear layers in float32"
                     + (f" ({', '.join(fl)})" if fl else "")
                     + ("; float32 input channels beside INT8: " + ", ".join(f"{k} {v}" for k, v in fc.items())
                        if fc else ""))
    return "\n".join(lines + [""] + notes)


def verdicts(records: list[dict]) -> list[str]:
    out = []
    for r in records:
        s, fid = r["seconds"], r["fidelity"].get("siglite int8 (onnxruntime)")
        ours, nncf = s["siglite int8 (onnxruntime)"], s.get("NNCF int8 (openvino)")
        checks = {}
        if "token_cos_mean" in fid:
            checks["token mean"] = fid["token_cos_mean"] >= BAR["token_mean"]
            checks["token 1%-low"] = fid["token_cos_p1"] >= BAR["token_p1"]
        else:  # text graphs: pooled only; its 1%-low takes the token 1%-low bar
            checks["pooled 1%-low"] = fid["pooled_cos_p1"] >= BAR["token_p1"]
        checks["pooled mean"] = fid["pooled_cos_mean"] >= BAR["pooled_mean"]
        checks["all linear layers INT8"] = not r["siglite_quant"]["float32_layers"]
        checks["quant CPU <= 120 s (the target is for full base-224 depth)"] = \
            r["siglite_quant"]["cpu_s"] <= BAR["quant_cpu_s"]
        if nncf:
            checks["speed wall"] = nncf["wall"] / ours["wall"] >= BAR["speed_vs_nncf"]
            checks["speed CPU"] = nncf["cpu"] / ours["cpu"] >= BAR["speed_vs_nncf"]
        out.append(f"{r['tower']} {r['kind']}: " + ", ".join(f"{k} {'met' if v else 'MISSED'}"
                                                           for k, v in checks.items()))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="siglip-base-patch16-224", help="architecture from `siglite list`")
    p.add_argument("--tower", default="vision", choices=("vision", "text"), help="the tower to quantize and compare")
    p.add_argument("--layers", type=int, default=None, help="layers of that tower (default: the architecture's)")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--images", type=int, default=64, help="calibration images or texts (siglite and NNCF alike)")
    p.add_argument("--check", type=int, default=16, 
                   help="further images / texts siglite's quantizer measures itself on")
    p.add_argument("--eval", type=int, default=32, help="held-out images / texts for the fidelity columns")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per engine (median reported)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--sensitivity-samples", type=int, default=0, help="passed to siglite quantize")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-nncf", action="store_true", help="siglite only (nncf not installed)")
    p.add_argument("--floor", action="store_true",
                   help="also time one float32 forward over the calibration + check inputs (siglite torch, ONNX "
                        "Runtime), once per run: the floor under any quantization time that calibrates in float32")
    p.add_argument("--work", default=None, help="folder for checkpoints and exports (default: a temporary one)")
    p.add_argument("--json", default="int8_vs_nncf.json", help="where to write the records")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from siglite.data.synthetic import generate
    from siglite.registry import get_spec

    spec = get_spec(args.model)
    if args.tower == "vision":
        size = spec.vision_config.image_size
        calib = [s.image for s in generate(args.images + args.check, 100, size)]
        held = [s.image for s in generate(args.eval, 200, size)]
    else:  # fit + check from the start of the corpus, held-out from its end, never overlapping
        texts = calibration_texts()
        if args.images + args.check + args.eval > len(texts):
            p.error(f"--images + --check + --eval must be <= {len(texts)} texts (the corpus size)")
        calib, held = texts[:args.images + args.check], texts[len(texts) - args.eval:]
    if args.batch > args.eval:
        p.error("--batch must be <= --eval (the timed batch is taken from the held-out inputs)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        # the floor once per run: the cost of a float32 forward does not depend on the weights' values
        records = [run_kind(k, args, work / k, calib, held, floor=args.floor and i == 0)
                   for i, k in enumerate(args.kinds)]
    Path(args.json).write_text(json.dumps(records, indent=2) + "\n")
    print(markdown(records, args))
    print()
    print("\n".join(verdicts(records)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
