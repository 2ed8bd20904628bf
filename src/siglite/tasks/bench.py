"""Latency and throughput of the vision tower, as flat records (timm ``benchmark.py`` style).

For every engine x precision x batch size x mode: warm-up iterations, then timed iterations (``torch.cuda.synchronize``
around each one on a GPU), latency p50/p90/p99 in ms per batch, throughput in images/s, and peak memory. Two modes,
the seed's two numbers (``shared/seeds/002_54a2fa41193a2260.txt``: model time and program FPS):

* ``model``: ``engine.encode_image`` on preprocessed pixels (host -> device copy and result copy included);
* ``e2e``: decode + preprocess + encode from encoded image files or bytes (synthetic 640x480 JPEGs by default).

``baseline="transformers"`` times the reference (``SiglipVisionModel``, sdpa attention, same dtype, same pixels,
``torch.inference_mode``; ``Siglip2VisionModel`` for SigLIP 2 NaFlex) in the same run; each record then carries
``ratio_vs_transformers`` = the reference's median latency / its median latency at the same precision, batch size
and mode (> 1: faster than the reference).

Peak memory (``peak_memory_mb``) is what the timed run added on top of what was held before it: on CUDA
``torch.cuda.max_memory_allocated`` minus the allocation before; on CPU the peak resident set size (Linux ``VmHWM``,
reset through ``/proc/self/clear_refs``) minus the resident size before. ``memory_mb`` is the peak in total.

SigLIP 2 NaFlex checkpoints are timed at one fixed patch budget (``max_num_patches``, default: an exported folder's,
else the checkpoint's): ``model`` mode feeds every target the same patches, each image at its own aspect ratio and
padded to the budget, with ``spatial_shapes`` (and the reference its ``pixel_attention_mask``); ``e2e`` runs each
side's own NaFlex processor at that budget. Records carry ``max_num_patches``.
"""

from __future__ import annotations

import csv
import gc
import io
import json
import logging
import re
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import SigliteError
from ..preprocess.naflex import NaflexConfig, PatchBatch

log = logging.getLogger(__name__)

BATCH_SIZES = (1, 8, 16, 32)
MODES = ("model", "e2e")
BASELINES = ("transformers",)
SYNTHETIC_SIZE = (480, 640)  # (H, W) of the generated e2e inputs: a typical photo (COCO's median is 480x640)
TABLE_COLUMNS = ["engine", "precision", "device", "mode", "batch_size", "latency_ms_p50", "latency_ms_p90",
                 "latency_ms_p99", "throughput_img_s", "peak_memory_mb", "ratio_vs_transformers"]


@dataclass
class Target:
    """One thing to time: an engine at a precision, able to run a pixel batch and an encoded-image batch."""

    engine: str
    precision: str
    device: str
    run_pixels: Callable[[np.ndarray], object]
    run_images: Callable[[list], object]


# -- targets ----------------------------------------------------------------------------------------------------------


def _is_cuda(device) -> bool:
    # engines name their device freely ("cuda:0", "cpu", an ONNX provider...); only CUDA ones need synchronising
    return str(device).startswith("cuda")


def siglite_target(folder: str | Path, engine: str = "torch", precision: str | None = None,
                   device: str | None = None, preprocess: str = "resize", decode: str = "cpu",
                   max_num_patches: int | None = None) -> Target:
    """A siglite engine loaded from `folder`; e2e decodes on the CPU, or with ``decode="gpu"`` through
    `siglite.preprocess.gpu` (nvJPEG; the cuda engine takes its device tensors as they are). NaFlex models run at
    the patch budget `max_num_patches` (`Model.patch_budget`)."""
    import siglite

    model = siglite.load(folder, engine=engine, device=device, dtype=precision)
    eng = model.engine
    dev = str(getattr(eng, "device", device or "cpu"))
    if decode not in ("cpu", "gpu"):
        raise SigliteError(f"unknown decode {decode!r}; choose cpu or gpu")
    if isinstance(model.image_config, NaflexConfig):
        return _naflex_target(model, dev, decode, max_num_patches)

    def run_images(imgs):
        if decode == "cpu":
            return model.image_features(imgs, preprocess=preprocess, batch_size=len(imgs))
        from ..preprocess.gpu import decode_batch_gpu

        px = decode_batch_gpu(imgs, model.image_config, preprocess, device=dev if _is_cuda(dev) else "cpu")[0]
        return eng.encode_image(px if eng.name == "cuda" else px.cpu().numpy())[0]

    return Target(engine=eng.name, precision=eng.precision, device=dev,
                  run_pixels=lambda px: eng.encode_image(px), run_images=run_images)


def _naflex_target(model, device: str, decode: str, max_num_patches: int | None) -> Target:
    """A siglite NaFlex model as a `Target`: model mode takes a `naflex.PatchBatch`; e2e runs siglite's NaFlex
    processor at the same budget."""
    if decode != "cpu":
        raise SigliteError("NaFlex models decode and patchify on the CPU; --decode gpu does not apply")
    eng = model.engine
    model.set_patch_budget(max_num_patches)
    pad_to = getattr(eng, "num_patches", None)  # an exported graph's fixed length (>= the budget)

    def run_patches(batch):
        patches = batch.patches
        if pad_to is not None and patches.shape[1] < pad_to:
            patches = np.pad(patches, ((0, 0), (0, pad_to - patches.shape[1]), (0, 0)))
        return eng.encode_image(patches, spatial_shapes=batch.spatial_shapes)

    return Target(engine=eng.name, precision=eng.precision, device=device, run_pixels=run_patches,
                  run_images=lambda imgs: model.image_features(imgs, batch_size=len(imgs)))


def transformers_target(folder: str | Path, precision: str | None = None, device: str | None = None,
                        max_num_patches: int | None = None) -> Target:
    """The reference: transformers' ``SiglipVisionModel`` (sdpa attention) and, for e2e, its own image processor.

    Like the siglite engines it takes numpy pixels and returns the pooled output on the host, so both sides pay the
    same copies. A SigLIP 2 NaFlex folder is timed as ``Siglip2VisionModel`` with ``pixel_attention_mask`` and
    ``spatial_shapes`` at the patch budget `max_num_patches` (model mode: a `naflex.PatchBatch`).
    """
    from ..checkpoints.layout import read_image_processor
    from ..preprocess.naflex import is_naflex_processor

    naflex = is_naflex_processor(read_image_processor(Path(folder)))
    try:
        from transformers import AutoImageProcessor, Siglip2VisionModel, SiglipVisionModel
    except ImportError as e:
        raise SigliteError(f"the transformers baseline needs transformers ({e}; pip install 'siglite[dev]')") from e
    from PIL import Image

    from ..engines.torch import parse_dtype

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = parse_dtype(precision)
    cls = Siglip2VisionModel if naflex else SiglipVisionModel
    model = cls.from_pretrained(str(folder), attn_implementation="sdpa", dtype=dtype).to(dev).eval()
    processor = AutoImageProcessor.from_pretrained(str(folder))

    def opened(imgs):
        return [Image.open(io.BytesIO(i) if isinstance(i, bytes) else i).convert("RGB") for i in imgs]

    if naflex:
        budget = max_num_patches or processor.max_num_patches

        @torch.inference_mode()
        def run(patches, mask, shapes):
            return model(pixel_values=torch.as_tensor(patches).to(dev, dtype), pixel_attention_mask=torch.as_tensor(
                mask).to(dev), spatial_shapes=torch.as_tensor(shapes).to(dev)).pooler_output.float().cpu().numpy()

        def run_images(imgs):
            x = processor(images=opened(imgs), max_num_patches=budget, return_tensors="pt")
            return run(x["pixel_values"], x["pixel_attention_mask"], x["spatial_shapes"])

        run_pixels = (lambda b: run(b.patches, b.mask, b.spatial_shapes))
    else:
        @torch.inference_mode()
        def run_tensor(x: torch.Tensor):
            return model(pixel_values=x.to(dev, dtype)).pooler_output.float().cpu().numpy()

        def run_images(imgs):
            return run_tensor(processor(images=opened(imgs), return_tensors="pt")["pixel_values"])

        run_pixels = (lambda px: run_tensor(torch.from_numpy(px)))
    return Target(engine="transformers", precision=str(dtype).removeprefix("torch."), device=str(dev),
                  run_pixels=run_pixels, run_images=run_images)


# -- measuring --------------------------------------------------------------------------------------------------------


def _proc_status_kb(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


class PeakMemory:
    """Peak memory of a block of code, in MB: ``delta`` (added over what was held at `start`) and ``peak``."""

    def __init__(self, device: str | torch.device = "cpu"):
        self.cuda = _is_cuda(device)
        self.device = torch.device(device) if self.cuda else None
        self.before = 0.0

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device) / 2**20
            return
        try:  # "5" resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
        rss = _proc_status_kb("VmRSS")
        self.before = rss / 1024 if rss is not None else self._maxrss_mb()

    def stop(self) -> tuple[float, float]:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            hwm = _proc_status_kb("VmHWM")
            peak = hwm / 1024 if hwm is not None else self._maxrss_mb()  # no /proc: process-lifetime peak
        return max(peak - self.before, 0.0), peak

    @staticmethod
    def _maxrss_mb() -> float:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, kB elsewhere


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, (MemoryError, torch.cuda.OutOfMemoryError)) or "out of memory" in str(e).lower()


def time_calls(fn: Callable[[], object], *, iters: int, warmup: int, cuda: bool = False) -> np.ndarray:
    """Seconds per call of `fn` after `warmup` untimed calls; on CUDA each call is bracketed by synchronize."""
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = np.empty(iters)
    for i in range(iters):
        t0 = time.perf_counter()
        fn()
        sync()
        times[i] = time.perf_counter() - t0
    return times


def latency_fields(seconds: np.ndarray, batch_size: int) -> dict:
    """p50/p90/p99/mean latency in ms per batch and throughput (images/s over the mean) from per-call seconds."""
    ms = np.asarray(seconds) * 1e3
    return {"latency_ms_p50": float(np.percentile(ms, 50)), "latency_ms_p90": float(np.percentile(ms, 90)),
            "latency_ms_p99": float(np.percentile(ms, 99)), "latency_ms_mean": float(ms.mean()),
            "throughput_img_s": float(batch_size * 1e3 / ms.mean())}


def synthetic_images(n: int, size: tuple[int, int] = SYNTHETIC_SIZE, seed: int = 0) -> list[bytes]:
    """`n` distinct JPEG-encoded photos-ish images (gradients plus noise), for e2e timing without a dataset."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for i in range(n):
        base = np.stack([(xx * 255 // w + 40 * i), (yy * 255 // h), ((xx + yy + 17 * i) // 3)], -1) % 256
        arr = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _cycle(items: Sequence, n: int) -> list:
    return [items[i % len(items)] for i in range(n)]


def measure(target: Target, mode: str, batch_size: int, *, pixels: np.ndarray, images: Sequence, iters: int,
            warmup: int) -> dict:
    """Time one target at one batch size and mode, halving the batch on out-of-memory (timm's batch shrinking)."""
    if mode not in MODES:
        raise SigliteError(f"unknown bench mode {mode!r}; choose one of {', '.join(MODES)}")
    cuda = _is_cuda(target.device)
    bs = batch_size
    while True:
        batch_px = _take(pixels, np.arange(bs) % _rows(pixels))
        batch_img = _cycle(images, bs)
        fn = (lambda: target.run_pixels(batch_px)) if mode == "model" else (lambda: target.run_images(batch_img))
        mem = PeakMemory(target.device)
        try:
            mem.start()
            seconds = time_calls(fn, iters=iters, warmup=warmup, cuda=cuda)
            delta, peak = mem.stop()
            break
        except Exception as e:
            if not _is_oom(e) or bs == 1:
                raise
            log.warning("%s %s batch %d: out of memory, retrying with %d", target.engine, target.precision, bs,
                        bs // 2)
            bs //= 2
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
    return {"engine": target.engine, "precision": target.precision, "device": target.device, "mode": mode,
            "batch_size": bs, "requested_batch_size": batch_size, "iters": iters, "warmup": warmup,
            **latency_fields(seconds, bs), "peak_memory_mb": round(delta, 1), "memory_mb": round(peak, 1)}


def _rows(inputs) -> int:
    return len(inputs.patches) if isinstance(inputs, PatchBatch) else len(inputs)


def _take(inputs, rows: np.ndarray):
    """Rows of pixels (N, 3, H, W) or of a NaFlex `PatchBatch`."""
    if isinstance(inputs, PatchBatch):
        return PatchBatch(inputs.patches[rows], inputs.mask[rows], inputs.spatial_shapes[rows])
    return inputs[rows]


def add_ratios(records: list[dict], baseline: str = "transformers") -> list[dict]:
    """Set ``ratio_vs_<baseline>`` = the baseline's median latency / this record's, at the same device, precision,
    batch size and mode: the speed-up (> 1: faster). The median, not the mean, so one stalled iteration on a busy
    machine does not decide it; at equal batch size it is the ratio of median throughputs."""
    key = ("device", "precision", "batch_size", "mode")
    ref = {tuple(r[k] for k in key): r["latency_ms_p50"] for r in records if r["engine"] == baseline}
    for r in records:
        base = ref.get(tuple(r[k] for k in key))
        if r["engine"] != baseline and base:
            r[f"ratio_vs_{baseline}"] = base / r["latency_ms_p50"]
    return records


# -- the benchmark ----------------------------------------------------------------------------------------------------


def bench(folder: str | Path, *, engines: Sequence[str | None] = (None,), precisions: Sequence[str | None] = (None,),
          batch_sizes: Sequence[int] = BATCH_SIZES, modes: Sequence[str] = ("model",), iters: int = 20,
          warmup: int = 3, device: str | None = None, baseline: str | None = None, images: Sequence | None = None,
          preprocess: str = "resize", threads: int | None = None, label: str | None = None,
          skip_unavailable: bool = False, decode: str = "cpu", max_num_patches: int | None = None,
          progress=None) -> list[dict]:
    """Benchmark the vision tower of the checkpoint in `folder`.

    Args:
        folder: A hub-layout checkpoint folder (a vision-only one is enough).
        engines: siglite engine names to time; None is the folder's own (the engine an exported or quantized
            folder's siglite.json names, else torch), as `siglite.load` picks it.
        precisions: Precisions (dtype names) to time each engine at; None is the engine's default (an exported
            folder's precision is fixed at export time).
        batch_sizes: Requested batch sizes (shrunk on out-of-memory; ``batch_size`` records what ran).
        modes: "model" (encode preprocessed pixels) and/or "e2e" (decode + preprocess + encode).
        iters: Timed iterations per record.
        warmup: Untimed iterations first.
        device: "cpu", "cuda"...; default CUDA when available.
        baseline: "transformers" to time the reference too and add ``ratio_vs_transformers``.
        images: Encoded images (paths or bytes) for e2e and for the model-mode pixels; default synthetic JPEGs.
        preprocess: "resize" or "letterbox" for siglite's e2e mode (the reference always uses its processor).
        threads: torch CPU threads (default: torch's choice); recorded in every record.
        label: The model name to put in records (default: the folder).
        skip_unavailable: Log and skip engine/precision pairs that cannot load instead of raising.
        decode: siglite's e2e decode: "cpu" (`preprocess.image`) or "gpu" (`preprocess.gpu`, nvJPEG).
        max_num_patches: SigLIP 2 NaFlex: the patch budget every target runs at (default: an exported folder's,
            else the checkpoint's); an error for other models.
        progress: Called with 1 after each measurement (`siglite.progress`).

    Returns:
        One flat record per target x mode x batch size.
    """
    from ..checkpoints.layout import read_image_processor
    from ..preprocess.image import ImageConfig, preprocess_batch
    from ..preprocess.naflex import is_naflex_processor
    from ..preprocess.naflex import preprocess_batch as naflex_batch

    if baseline is not None and baseline not in BASELINES:
        raise SigliteError(f"unknown baseline {baseline!r}; choose one of {', '.join(BASELINES)}")
    for m in modes:
        if m not in MODES:
            raise SigliteError(f"unknown bench mode {m!r}; choose one of {', '.join(MODES)}")
    if iters < 1 or warmup < 0 or not batch_sizes or min(batch_sizes) < 1:
        raise SigliteError("bench needs iters >= 1, warmup >= 0 and batch sizes >= 1")
    if threads:
        torch.set_num_threads(threads)
    folder = Path(folder)
    processor = read_image_processor(folder)
    images = list(images)[:max(batch_sizes)] if images else synthetic_images(min(max(batch_sizes), 32))
    if is_naflex_processor(processor):  # SigLIP 2 NaFlex: patches at one fixed budget, not fixed-size pixels
        cfg = NaflexConfig.from_hf(processor)
        budget = _naflex_budget(folder, cfg, max_num_patches)
        if preprocess != "resize":
            raise SigliteError(f"NaFlex models keep the aspect ratio; --preprocess {preprocess} does not apply")
        pixels, _, _ = naflex_batch(images, cfg, max_num_patches=budget, pad_to=budget)  # the same for every target
        shape = f"{budget} patches"
    else:
        if max_num_patches is not None:
            raise SigliteError("max_num_patches applies to NaFlex (siglip2) models only")
        cfg = ImageConfig.from_hf(processor)
        pixels, _, _ = preprocess_batch(images, cfg, preprocess)  # the same pixels for every target
        budget, shape = None, f"{cfg.height}x{cfg.width}"

    makers = [(e, p, lambda e=e, p=p: siglite_target(folder, e, p, device, preprocess, decode, budget))
              for e in engines for p in precisions]
    if baseline == "transformers":
        makers += [("transformers", p, lambda p=p: transformers_target(folder, p, device, budget)) for p in precisions]
    records = []
    for engine, precision, make in makers:
        try:
            target = make()
        except SigliteError as e:
            if not skip_unavailable:
                raise
            log.warning("skipping %s %s: %s", engine, precision, e)
            continue
        for mode in modes:
            for bs in batch_sizes:
                rec = measure(target, mode, bs, pixels=pixels, images=images, iters=iters, warmup=warmup)
                if mode == "e2e" and target.engine != "transformers":
                    rec["decode"] = decode
                records.append({"model": label or str(folder), "image_size": shape, **rec,
                                "threads": torch.get_num_threads() if not _is_cuda(target.device) else None,
                                **({"max_num_patches": budget} if budget is not None else {})})
                log.info("%s", records[-1])
                if progress is not None:
                    progress(1)
        del target  # free this engine's weights before loading the next
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return add_ratios(records) if baseline else records


def _naflex_budget(folder: Path, cfg, max_num_patches: int | None) -> int:
    """The patch budget a NaFlex bench runs at: the one asked for, else an exported folder's, else the checkpoint's."""
    from ..artifact import is_exported, read_sidecar

    exported = read_sidecar(folder).dims.get("num_patches") if is_exported(folder) else None
    budget = max_num_patches or exported or cfg.max_num_patches
    if exported is not None and budget > exported:
        raise SigliteError(f"{folder}: exported for max_num_patches={exported}; {budget} does not fit")
    return int(budget)


def bench_spec(spec_name: str, *, vision_layers: int | None = None, seed: int = 0, **kw) -> list[dict]:
    """`bench` on random weights at a known architecture's shape (e.g. "siglip-base-patch16-224"); only the vision
    tower is built and timed. `vision_layers` overrides the depth for quick checks."""
    from ..checkpoints import random_model, save_checkpoint
    from ..registry import get_spec

    if vision_layers is not None and (isinstance(vision_layers, bool) or vision_layers < 1):
        raise SigliteError(f"vision_layers must be a positive integer, got {vision_layers!r}")

    spec = get_spec(spec_name)
    with tempfile.TemporaryDirectory(prefix="siglite-bench-") as tmp:
        save_checkpoint(random_model(spec, seed=seed, vision_layers=vision_layers, text=False), tmp, spec)
        label = spec.name + (f" ({vision_layers} layers)" if vision_layers is not None else "") + " [random weights]"
        return bench(tmp, label=kw.pop("label", None) or label, **kw)


# -- output -----------------------------------------------------------------------------------------------------------


RECORD_SUFFIXES = (".json", ".csv")


def write_records(records: list[dict], path: str | Path) -> Path:
    """Write records as JSON (a list) or CSV (columns: the union of keys in first-seen order), by suffix; atomically
    (a temporary file renamed over `path`)."""
    from ..fileio import atomic_write

    path = Path(path)
    if path.suffix.lower() not in RECORD_SUFFIXES:
        raise SigliteError(f"{path}: records are written as .json or .csv")

    def write(tmp: Path):
        if path.suffix.lower() == ".csv":
            columns = list(dict.fromkeys(k for r in records for k in r))
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(records)
        else:
            tmp.write_text(json.dumps(records, indent=2) + "\n")

    return atomic_write(path, write)


def plot_records(records: list[dict], path: str | Path) -> Path:
    """A PNG chart: throughput against batch size, one line per engine/precision/mode (matplotlib, optional)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise SigliteError(f"plotting needs matplotlib ({e}); pip install 'siglite[plot]'") from e
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lines: dict[tuple, list] = {}
    for r in records:
        lines.setdefault((r["engine"], r["precision"], r["mode"]), []).append((r["batch_size"], r["throughput_img_s"]))
    for (engine, precision, mode), pts in sorted(lines.items()):
        xs, ys = zip(*sorted(pts))
        ax.plot(xs, ys, marker="o", label=f"{engine} {precision} {mode}")
    ax.set_xscale("log", base=2)
    sizes = sorted({r["batch_size"] for r in records})
    ax.set_xticks(sizes, [str(b) for b in sizes])
    ax.set_xlabel("batch size")
    ax.set_ylabel("images / s")
    title = records[0].get("model", "") if records else ""
    ax.set_title(f"{title} on {records[0]['device']}" if records else "")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    from ..fileio import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return Path(path)


def markdown_table(records: list[dict]) -> str:
    """A markdown table of bench records (for README; see benchmarks/readme_table.py)."""
    head = ["engine", "precision", "device", "mode", "batch", "p50 ms", "p90 ms", "img/s", "vs transformers"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        ratio = r.get("ratio_vs_transformers")
        lines.append("| " + " | ".join([
            r["engine"], r["precision"], r["device"], r["mode"], str(r["batch_size"]), f"{r['latency_ms_p50']:.1f}",
            f"{r['latency_ms_p90']:.1f}", f"{r['throughput_img_s']:.1f}",
            f"{ratio:.2f}x" if ratio else ("1.00x (reference)" if r["engine"] == "transformers" else "")]) + " |")
    return "\n".join(lines)
