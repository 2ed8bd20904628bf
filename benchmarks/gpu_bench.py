"""GPU benchmark of the cuda engine against transformers, with fidelity: `python benchmarks/gpu_bench.py`.

Measures, in one run on one GPU (random weights at the real shapes, `siglite.checkpoints.random_model`):

* so400m-384 vision tower at batch 1 and at --batch (default 64): transformers `SiglipVisionModel` (SDPA, fp16) as the
  baseline, then our engine in bf16, fp16 and fp8: images/s, batch-1 latency (p50 ms), peak memory, and fidelity of
  last_hidden_state and pooler_output against float32 (per-image cosine: mean and 1%-low), as issue 5 asks;
* fidelity of fp8 and fp16 on the same model with injected activation outlier channels;
* our bf16 fed from host numpy arrays (pinned buffers, copies overlapped with compute) next to device-resident input;
* base-224 and large-384 throughput (baseline, bf16, fp8);
* nvJPEG decode + GPU resize throughput, when torchvision is installed.

Records are printed as they come (flushed), then as one markdown table, and written as JSON (--out). The run keeps to
--budget seconds (default 480, for a 10-minute slot): sections that would start after it are skipped and listed.
Without CUDA it exits with a message (status 2); `--dry-run-cpu` runs every code path on tiny models on the CPU.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from siglite.engines.cuda import CudaEngine
from siglite.engines.torch import TorchEngine
from siglite.checkpoints import to_hf_state_dict
from siglite.metrics import cosine_summary
from siglite.quant.fp8 import synthetic_pixels
from siglite.registry import get_spec
from siglite.checkpoints import random_model
from siglite.testing import inject_outliers

MAIN = "siglip-so400m-patch14-384"
OTHERS = ("siglip-base-patch16-224", "siglip-large-patch16-384")
PRECISIONS = ("bfloat16", "fp8", "float16", "fp8-fast")  # in order of importance: the budget may cut the tail
FIDELITY_IMAGES = 32
CALIB_IMAGES = 32
TINY = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
        "image_size": 64, "patch_size": 8}
COLUMNS = ["model", "impl", "precision", "batch", "images_per_s", "latency_ms", "vs_baseline", "vs_bf16",
           "hidden_cos_mean", "hidden_cos_p1", "pooled_cos_mean", "peak_mem_gb", "note"]

T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


@dataclasses.dataclass
class Setup:
    device: torch.device
    batch: int
    iters: int
    latency_iters: int
    compile: str | None
    budget: float
    tiny: bool


def spec_for(name: str, setup: Setup):
    spec = get_spec(name)
    return dataclasses.replace(spec, vision={**spec.vision, **TINY}) if setup.tiny else spec


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, x, iters: int, device: torch.device, warmup: int = 2) -> list[float]:
    """Seconds per call of fn(x), synchronised, after warm-up calls."""
    for _ in range(warmup):
        fn(x)
    sync(device)
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        fn(x)
        sync(device)
        out.append(time.perf_counter() - t)
    return out


def peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def hf_baseline(model, spec, device: torch.device):
    """transformers SiglipVisionModel with our random weights, SDPA attention, fp16 (fp32 on the CPU dry run)."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(**spec.vision)
    config._attn_implementation = "sdpa"
    hf = SiglipVisionModel(config).eval()
    weights = to_hf_state_dict(model)
    if not any(k.startswith("vision_model.") for k in hf.state_dict()):  # transformers 5 dropped the prefix here
        weights = {k.removeprefix("vision_model."): v for k, v in weights.items()}
    missing, unexpected = hf.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"baseline weights do not match: missing {missing[:3]}, unexpected {unexpected[:3]}")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    hf = hf.to(device, dtype)

    @torch.inference_mode()
    def run(x):
        out = hf(pixel_values=x.to(dtype))
        return out.last_hidden_state, out.pooler_output

    return hf, run


def fidelity(ref, out) -> dict:
    """Cosine rows vs the float32 reference (ref = (pooled, hidden), out likewise)."""
    h, p = cosine_summary(ref[1], out[1]), cosine_summary(ref[0], out[0])
    return {"hidden_cos_mean": h["mean"], "hidden_cos_p1": h["p1"], "pooled_cos_mean": p["mean"]}


def throughput_rows(name: str, impl: str, precision: str, run, setup: Setup, shape, batches=None) -> list[dict]:
    """images/s at setup.batch and p50 latency at batch 1, on device-resident input."""
    rows = []
    for b in batches or (setup.batch, 1):
        x = torch.randn(b, *shape, device=setup.device).clamp(-1, 1)
        iters = setup.iters if b > 1 else setup.latency_iters
        try:
            t = timed(run, x, iters, setup.device)
        except torch.cuda.OutOfMemoryError:
            log(f"{impl} {precision} batch {b}: out of memory, halving")
            reset_peak(setup.device)
            b //= 2
            x = x[:b]
            t = timed(run, x, iters, setup.device)
        p50 = statistics.median(t)
        rows.append({"model": name, "impl": impl, "precision": precision, "batch": b, "images_per_s": b / p50,
                     "latency_ms": 1000 * p50 if b == 1 else None, "peak_mem_gb": peak_gb(setup.device)})
    return rows


def engine_kw(setup: Setup, calib) -> dict:
    cuda = setup.device.type == "cuda"
    return {"compile": setup.compile if cuda else None, "graphs": cuda, "graph_sizes": (1, setup.batch), "calib": calib}


def bench_model(name: str, setup: Setup, precisions, *, with_fidelity: bool, outliers: bool) -> list[dict]:
    spec = spec_for(name, setup)
    cfg = spec.vision_config
    shape = (3, cfg.image_size, cfg.image_size)
    log(f"{name}: building random weights ({cfg.num_hidden_layers} layers, width {cfg.hidden_size})")
    model = random_model(spec, text=False)
    pixels = synthetic_pixels(FIDELITY_IMAGES, cfg.image_size, seed=1)
    calib = synthetic_pixels(CALIB_IMAGES, cfg.image_size, seed=0).numpy()
    rows = []
    ref = None
    if with_fidelity:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False  # a TF32 patch convolution would blur the float32 reference
        fp32 = TorchEngine(copy.deepcopy(model), setup.device)
        ref = fp32.encode_image(pixels.numpy(), tokens=True)
        del fp32
        log(f"{name}: float32 reference done")

    reset_peak(setup.device)
    hf, run = hf_baseline(model, spec, setup.device)
    impl = f"transformers {getattr(hf.config, '_attn_implementation', '?')}"
    base_rows = throughput_rows(name, impl, "float16", run, setup, shape)
    if ref is not None:
        hidden, pooled = run(pixels.to(setup.device))
        base_rows[0].update(fidelity(ref, (pooled.float().cpu().numpy(), hidden.float().cpu().numpy())))
    emit(base_rows)
    rows += base_rows
    baseline = {r["batch"]: r["images_per_s"] for r in base_rows}
    ours_bf16: dict[int, float] = {}
    del hf, run
    reset_peak(setup.device)

    for precision in precisions:
        if over_budget(setup, f"{name} {precision}"):
            break
        t = time.perf_counter()
        engine = CudaEngine(copy.deepcopy(model), setup.device, precision, **engine_kw(setup, calib))
        engine.warmup((1, setup.batch))
        log(f"{name} {precision}: built, compiled and captured in {time.perf_counter() - t:.1f}s "
            f"(compile={engine.compile_mode})")
        prec_rows = throughput_rows(name, "siglite cuda", precision, engine.encode_image, setup, shape)
        for r in prec_rows:
            r["vs_baseline"] = r["images_per_s"] / baseline[r["batch"]] if r["batch"] in baseline else None
            if precision == "bfloat16":
                ours_bf16[r["batch"]] = r["images_per_s"]
            elif r["batch"] in ours_bf16:
                r["vs_bf16"] = r["images_per_s"] / ours_bf16[r["batch"]]
            r["note"] = f"compile={engine.compile_mode}, graphs={engine.graphs}"
        if ref is not None:
            prec_rows[0].update(fidelity(ref, engine.encode_image(pixels.numpy(), tokens=True)))
        if precision == "bfloat16" and with_fidelity:
            host = synthetic_pixels(4 * setup.batch, cfg.image_size, seed=2).numpy()
            t = timed(engine.encode_image, host, max(2, setup.iters // 4), setup.device, warmup=1)
            prec_rows.append({"model": name, "impl": "siglite cuda", "precision": precision, "batch": setup.batch,
                              "images_per_s": len(host) / statistics.median(t),
                              "note": "host numpy input: pinned staging, H2D overlapped on a side stream"})
        emit(prec_rows)
        rows += prec_rows
        del engine
        torch._dynamo.reset()  # free the compiled code of this engine before the next
        reset_peak(setup.device)

    if outliers and not over_budget(setup, f"{name} outlier fidelity"):
        rows += outlier_fidelity(name, model, pixels, calib, setup)
    return rows


def outlier_fidelity(name: str, model, pixels, calib, setup: Setup) -> list[dict]:
    """Fidelity only (eager engines): the same model with activation outlier channels injected."""
    outl = inject_outliers(copy.deepcopy(model))
    ref = TorchEngine(copy.deepcopy(outl), setup.device).encode_image(pixels.numpy(), tokens=True)
    rows = []
    for precision in ("fp8", "float16"):
        engine = CudaEngine(copy.deepcopy(outl), setup.device, precision, compile=None, graphs=False, calib=calib)
        row = {"model": name, "impl": "siglite cuda", "precision": precision, "batch": FIDELITY_IMAGES,
               "note": "fidelity on the model with injected outlier channels (eager)"}
        row.update(fidelity(ref, engine.encode_image(pixels.numpy(), tokens=True)))
        emit([row])
        rows.append(row)
        del engine
        reset_peak(setup.device)
    return rows


def decode_rows(setup: Setup) -> list[dict]:
    """nvJPEG decode + GPU resize of 640x480 JPEGs (needs torchvision)."""
    import io

    import PIL.Image

    from siglite.preprocess.gpu import _torchvision, decode_batch_gpu
    from siglite.preprocess.image import ImageConfig

    if _torchvision() is None or setup.device.type != "cuda":
        return [{"model": "-", "impl": "decode", "precision": "-", "note": "skipped: needs torchvision and CUDA"}]
    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(setup.batch):
        yy, xx = np.mgrid[0:480, 0:640]
        arr = np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1) + rng.integers(0, 40, (480, 640, 3))
        buf = io.BytesIO()
        PIL.Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
        blobs.append(buf.getvalue())
    cfg = ImageConfig(height=384, width=384)
    t = timed(lambda b: decode_batch_gpu(b, cfg, device=setup.device), blobs, 5, setup.device, warmup=1)
    return [{"model": "640x480 JPEG -> 384", "impl": "nvJPEG + GPU resize", "precision": "-", "batch": len(blobs),
             "images_per_s": len(blobs) / statistics.median(t), "note": "decode_batch_gpu"}]


def over_budget(setup: Setup, what: str) -> bool:
    if time.perf_counter() - T0 > setup.budget:
        log(f"budget of {setup.budget:.0f}s spent: skipping {what}")
        SKIPPED.append(what)
        return True
    return False


SKIPPED: list[str] = []
RECORDS: list[dict] = []
OUT: dict = {"path": None, "device": None}


def emit(rows: list[dict]) -> None:
    """Print records as they come and rewrite the JSON file, so a run cut short keeps what it measured."""
    for r in rows:
        RECORDS.append(r)
        print("RECORD " + json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()}),
              flush=True)
    if OUT["path"]:
        Path(OUT["path"]).write_text(json.dumps({"device": OUT["device"], "torch": torch.__version__,
                                                 "records": RECORDS, "skipped": SKIPPED}, indent=2, default=str))


def markdown(rows: list[dict]) -> str:
    def cell(v):
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.4f}" if v < 10 else f"{v:.1f}"
        return str(v)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64, help="throughput batch size (default 64)")
    ap.add_argument("--iters", type=int, default=10, help="timed calls per throughput point (default 10)")
    ap.add_argument("--latency-iters", type=int, default=30, help="timed calls at batch 1 (default 30)")
    ap.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS))
    ap.add_argument("--compile", default="default", help="torch.compile mode for our engine, or 'none'")
    ap.add_argument("--no-others", action="store_true", help="skip base-224 and large-384")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds after which no new section starts")
    ap.add_argument("--out", default="gpu_bench.json", help="JSON records file (default gpu_bench.json)")
    ap.add_argument("--dry-run-cpu", action="store_true", help="tiny models on the CPU: checks the script, not speed")
    args = ap.parse_args(argv)

    if args.dry_run_cpu:
        setup = Setup(torch.device("cpu"), 4, 2, 2, None, args.budget, tiny=True)
    else:
        if not torch.cuda.is_available():
            print("gpu_bench: no CUDA GPU visible to torch (torch.cuda.is_available() is False); run it on a GPU "
                  "machine, or pass --dry-run-cpu to check the script on tiny models", file=sys.stderr)
            return 2
        setup = Setup(torch.device("cuda"), args.batch, args.iters, args.latency_iters,
                      None if args.compile == "none" else args.compile, args.budget, tiny=False)
        props = torch.cuda.get_device_properties(0)
        log(f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, SM {props.major}.{props.minor}; "
            f"torch {torch.__version__}")
    OUT.update(path=args.out, device=torch.cuda.get_device_name(0) if setup.device.type == "cuda" else "cpu")

    sections = [(MAIN, {"precisions": args.precisions, "with_fidelity": True, "outliers": True})]
    if not args.no_others:
        others = [p for p in ("bfloat16", "fp8") if p in args.precisions]
        sections += [(n, {"precisions": others, "with_fidelity": False, "outliers": False}) for n in OTHERS]
    for name, kw in sections:
        if over_budget(setup, name):
            continue
        try:
            bench_model(name, setup, **kw)
        except Exception as e:  # noqa: BLE001 -- one failing section must not lose the others' numbers
            traceback.print_exc()
            emit([{"model": name, "impl": "-", "precision": "-", "note": f"FAILED: {type(e).__name__}: {e}"[:300]}])
        reset_peak(setup.device)
    if not over_budget(setup, "GPU decode"):
        try:
            emit(decode_rows(setup))
        except Exception as e:  # noqa: BLE001
            emit([{"model": "-", "impl": "decode", "precision": "-", "note": f"FAILED: {type(e).__name__}: {e}"}])

    print("\n" + markdown(RECORDS), flush=True)
    if SKIPPED:
        print(f"\nskipped (budget): {', '.join(SKIPPED)}", flush=True)
    emit([])
    log(f"records written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
