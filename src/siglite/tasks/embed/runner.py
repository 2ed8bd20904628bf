"""The shard runner of `siglite embed`: job settings, the shard plan, per-modality steps and the batch pipeline.

The job is cut into fixed shards of R items; a shard is always encoded in the same engine batches (aligned to its
start), so a job killed at any point and run again recomputes exactly the missing shards and the result equals an
uninterrupted run bit for bit. The same `run_shards` runs in this process (`local`) and on Ray actors (`ray`), which
is why both give identical rows.

Decoding and preprocessing run in a pool of worker threads that keeps a bounded number of batches in flight ahead of
the engine. Threads, not processes: PIL and OpenCV release the GIL while decoding and resizing, and on this CPU a
thread pool matched or beat a process pool, which also pays for pickling every pixel batch back (measured with
``benchmarks/embed_throughput.py --executor process``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import deque
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import numpy as np

from ...errors import ImageError, SigliteError
from ...preprocess import naflex
from ...preprocess.image import PREPROCESS, ImageConfig, decode
from ...data.sources import Item, Source
from .store import METADATA_COLUMNS, OutputDir

if TYPE_CHECKING:
    from ...pipeline import Model

DTYPES = ("float32", "float16")
EXECUTORS = ("thread", "process")
DEFAULT_SHARD_SIZE = 10_000
DEFAULT_BATCH_SIZE = 32
_MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".onnx", ".xml", ".txt")

def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


@dataclass(frozen=True)
class EmbedConfig:
    """How a job runs. preprocess, tokens, normalize, dtype and shard_size change the output (they are in the settings
    hash); batch_size, workers and executor only change the speed."""

    preprocess: str = "resize"
    tokens: bool = False
    normalize: bool = False
    dtype: str = "float32"
    shard_size: int = DEFAULT_SHARD_SIZE
    batch_size: int = DEFAULT_BATCH_SIZE
    workers: int = field(default_factory=default_workers)
    executor: str = "thread"
    layer: int | tuple[int, ...] | None = None  # VLM feature tap (see Model.image_features); with tokens only
    post_norm: bool = False

    def __post_init__(self):
        if self.preprocess not in PREPROCESS:
            raise SigliteError(f"unknown preprocessing {self.preprocess!r}; choose {', '.join(PREPROCESS)}")
        if self.dtype not in DTYPES:
            raise SigliteError(f"unknown output dtype {self.dtype!r}; choose {', '.join(DTYPES)}")
        if self.executor not in EXECUTORS:
            raise SigliteError(f"unknown executor {self.executor!r}; choose {', '.join(EXECUTORS)}")
        for name in ("shard_size", "batch_size", "workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SigliteError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")


@dataclass
class Shard:
    index: int
    items: list[Item]
    keys: list[str] = field(default_factory=list)  # `identities` of the items (what a later run counts as done)


def plan_shards(items: list[Item], shard_size: int) -> list[Shard]:
    """Shard k = items [k*R, (k+1)*R): fixed by the item order alone, so every run and every worker agrees."""
    return [Shard(k, items[start:start + shard_size]) for k, start in enumerate(range(0, len(items), shard_size))]


def identities(items: list[Item], modality: str) -> list[str]:
    """What makes an input the same input in a later run (incremental embed): an image's key and path, a text's
    content; the n-th repeat of one gets a suffix so duplicates are counted, not merged."""
    seen: dict[str, int] = {}
    out = []
    for it in items:
        base = f"{it.key}\t{it.path}" if modality == "image" else f"text\t{it.ref}"
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.append(base if n == 0 else f"{base}\t#{n}")
    return out

# --------------------------------------------------------------------------------------------------------------------
# Model identity and job settings
# --------------------------------------------------------------------------------------------------------------------


def model_fingerprint(model: Model) -> str:
    """sha256 identifying a checkpoint's files: every config/tokenizer file in full, and each weight file by size plus
    18 sampled 64 KiB windows (head, tail, 16 evenly spaced), so a multi-GB checkpoint is identified in milliseconds
    while any retrained or fine-tuned weights (which differ everywhere) change it."""
    h = hashlib.sha256()
    folder = Path(model.folder) if model.folder else None
    if folder is None or not folder.is_dir():
        h.update(json.dumps({k: v for k, v in model.describe().items() if k != "folder"}, sort_keys=True,
                            default=str).encode())
        return h.hexdigest()
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.suffix not in _MODEL_FILE_SUFFIXES:
            continue
        size = path.stat().st_size
        h.update(f"{path.name}\0{size}\0".encode())
        with open(path, "rb") as f:
            if size <= 8 << 20:
                h.update(f.read())
                continue
            window = 64 << 10
            for offset in sorted({0, size - window, *(size * i // 17 for i in range(1, 17))}):
                f.seek(offset)
                h.update(f.read(window))
    return h.hexdigest()


def job_settings(model: Model, source: Source, cfg: EmbedConfig) -> dict:
    """Everything that decides how an input becomes a row; a resumed or incremental job must match it exactly (the
    input list itself may grow: new inputs go to new shards)."""
    settings = {
        "modality": source.modality,
        "model": model_fingerprint(model),
        "engine": model.engine.name,
        "precision": model.engine.precision,
        "dtype": cfg.dtype,
        "normalize": cfg.normalize,
        "shard_size": cfg.shard_size,
    }
    if source.modality == "image":
        settings.update(preprocess=cfg.preprocess, tokens=cfg.tokens, image=model.image_config.to_dict(),
                        max_pixels=model.max_pixels, background=list(model.background))
        if cfg.layer is not None:  # only when set, so the hash of a default job stays what it was
            settings.update(layer=cfg.layer, post_norm=cfg.post_norm)
        if isinstance(model.image_config, naflex.NaflexConfig):  # the budget this job runs at (a resume must match)
            settings["image"]["max_num_patches"] = model.patch_budget()
    else:
        settings.update(tokenizer=model.tokenizer.settings())
    return settings


# --------------------------------------------------------------------------------------------------------------------
# Steps: what a worker prepares and what the engine runs, per modality
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Prepared:
    """A batch ready for the engine: inputs for the rows that loaded, their metadata, and the failures."""

    inputs: object  # image: (n, 3, H, W) float32; text: (ids (n, L), mask (n, L) | None)
    meta: dict[str, list]  # METADATA_COLUMNS[modality] -> n values each
    failures: list[dict]  # {id, key, source, reason}


def prepare_images(source: Source, items: list[Item], cfg: ImageConfig, mode: str, max_pixels: int | None,
                   background: tuple) -> Prepared:
    """Reads, decodes and preprocesses a batch (runs in a worker thread or process)."""
    fn = PREPROCESS[mode]
    pixels, failures = [], []
    meta = {name: [] for name, _ in METADATA_COLUMNS["image"]}
    for item in items:
        try:
            rgb = decode(source.load(item), max_pixels=max_pixels, background=background)
            chw = fn(rgb, cfg)
            if chw.shape != (3, cfg.height, cfg.width):  # only with do_resize=False
                raise ImageError(item.path, f"image is {rgb.shape[1]}x{rgb.shape[0]} but do_resize=False needs "
                                            f"exactly {cfg.width}x{cfg.height}")
        except ImageError as exc:
            failures.append({"id": item.id, "key": item.key, "source": item.path, "reason": exc.reason})
            continue
        pixels.append(chw)
        for name, value in zip(meta, (item.id, item.key, item.path, rgb.shape[1], rgb.shape[0])):
            meta[name].append(value)
    batch = np.stack(pixels) if pixels else np.empty((0, 3, cfg.height, cfg.width), np.float32)
    return Prepared(batch, meta, failures)


class ImageStep:
    modality = "image"

    def __init__(self, model: Model, source: Source, cfg: EmbedConfig):
        if model.image_config is None:
            raise SigliteError(f"{model.name}: this checkpoint has no vision tower / image preprocessing config")
        self.model, self.source, self.cfg = model, source, cfg
        layer = list(cfg.layer) if isinstance(cfg.layer, tuple) else cfg.layer
        self.taps = model.layer_options(cfg.tokens, layer, cfg.post_norm)

    def submit(self, pool: Executor, items: list[Item]) -> Future:
        m = self.model
        return pool.submit(prepare_images, self.source, items, m.image_config, self.cfg.preprocess, m.max_pixels,
                           m.background)

    def encode(self, prep: Prepared) -> tuple[np.ndarray | None, np.ndarray | None]:
        if len(prep.inputs) == 0:
            return None, None
        return self.model.engine.encode_image(prep.inputs, tokens=self.cfg.tokens, **self.taps)

    def probe(self) -> dict:
        """Output dims from one blank image (needed to write a shard in which every image failed)."""
        c = self.model.image_config
        pooled, hidden = self.model.engine.encode_image(np.zeros((1, 3, c.height, c.width), np.float32),
                                                        tokens=self.cfg.tokens, **self.taps)
        return {"emb": None if pooled is None else list(pooled.shape[1:]),
                "tokens": None if hidden is None else list(hidden.shape[1:])}


def prepare_texts(model: Model, items: list[Item]) -> Prepared:
    texts = [it.ref for it in items]
    meta = {"id": [it.id for it in items], "line": [int(it.key) for it in items], "caption": texts}
    return Prepared(model.tokenize(texts), meta, [])


class TextStep:
    modality = "text"

    def __init__(self, model: Model, source: Source, cfg: EmbedConfig):
        if model.tokenizer is None:
            raise SigliteError(f"{model.name}: this checkpoint has no tokenizer / text tower")
        self.model, self.source, self.cfg = model, source, cfg

    def submit(self, pool: Executor, items: list[Item]) -> Future:
        if isinstance(pool, ProcessPoolExecutor):  # the tokenizer stays in this process; tokenizing is cheap
            done: Future = Future()
            done.set_result(prepare_texts(self.model, items))
            return done
        return pool.submit(prepare_texts, self.model, items)

    def encode(self, prep: Prepared) -> tuple[np.ndarray | None, None]:
        return self.model.engine.encode_text(*prep.inputs), None

    def probe(self) -> dict:
        return {"emb": list(self.model.engine.encode_text(*self.model.tokenize([""])).shape[1:]), "tokens": None}


def make_step(model: Model, source: Source, cfg: EmbedConfig):
    if source.modality == "image" and isinstance(model.image_config, naflex.NaflexConfig):
        return PatchStep(model, source, cfg)
    return (ImageStep if source.modality == "image" else TextStep)(model, source, cfg)


# -- NaFlex (SigLIP 2 variable resolution): patches + spatial shapes instead of fixed-size pixels ----------------------


def prepare_patches(source: Source, items: list[Item], cfg: naflex.NaflexConfig, max_pixels: int | None,
                    background: tuple, pad_to: int | None, max_num_patches: int | None = None) -> Prepared:
    """`prepare_images` for NaFlex models: each image at its own aspect ratio with at most `max_num_patches`
    patches (default the config's), the batch padded to its longest (or to `pad_to`)."""
    items_ok, failures = [], []
    meta = {name: [] for name, _ in METADATA_COLUMNS["image"]}
    for item in items:
        try:
            rgb = decode(source.load(item), max_pixels=max_pixels, background=background)
            items_ok.append(naflex.preprocess(rgb, cfg, max_num_patches))
        except ImageError as exc:
            failures.append({"id": item.id, "key": item.key, "source": item.path, "reason": exc.reason})
            continue
        for name, value in zip(meta, (item.id, item.key, item.path, rgb.shape[1], rgb.shape[0])):
            meta[name].append(value)
    return Prepared(naflex.pad(items_ok, cfg.patch_size**2 * 3, pad_to), meta, failures)


class PatchStep(ImageStep):
    """Pooled embeddings of a NaFlex model at its patch budget (`Model.patch_budget`: the model's
    `max_num_patches`, else an exported graph's, else the checkpoint's).
    Per-patch tokens vary in number per image and do not fit the (N, T, D) token shards."""

    def __init__(self, model: Model, source: Source, cfg: EmbedConfig):
        super().__init__(model, source, cfg)
        if cfg.tokens:
            raise SigliteError(f"{model.name}: NaFlex models give a different number of tokens per image; token "
                               "shards need a fixed-resolution model (use Model.image_features(tokens=True))")
        if cfg.preprocess != "resize":
            raise SigliteError(f"{model.name}: NaFlex models keep the aspect ratio; preprocess {cfg.preprocess!r} "
                               "does not apply (use 'resize')")

    def submit(self, pool: Executor, items: list[Item]) -> Future:
        m = self.model
        return pool.submit(prepare_patches, self.source, items, m.image_config, m.max_pixels, m.background,
                           getattr(m.engine, "num_patches", None), m.patch_budget())

    def encode(self, prep: Prepared) -> tuple[np.ndarray | None, np.ndarray | None]:
        batch = prep.inputs
        if len(batch.patches) == 0:
            return None, None
        return self.model.engine.encode_image(batch.patches, spatial_shapes=batch.spatial_shapes)

    def probe(self) -> dict:
        p = self.model.image_config.patch_size
        pooled, _ = self.model.engine.encode_image(np.zeros((1, 1, p * p * 3), np.float32),
                                                   spatial_shapes=np.ones((1, 2), np.int64))
        return {"emb": list(pooled.shape[1:]), "tokens": None}



@dataclass
class ShardBuffer:
    """Rows of one shard collected batch by batch, in item order."""

    shard: Shard
    emb: list[np.ndarray] = field(default_factory=list)
    tokens: list[np.ndarray] = field(default_factory=list)
    meta: dict[str, list] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)

    def add(self, prep: Prepared, pooled: np.ndarray | None, hidden: np.ndarray | None) -> None:
        for name, values in prep.meta.items():
            self.meta.setdefault(name, []).extend(values)
        self.failures += prep.failures
        if pooled is not None:
            self.emb.append(pooled)
        if hidden is not None:
            self.tokens.append(hidden)

    def write(self, out: OutputDir, cfg: EmbedConfig, dims: dict) -> dict:
        """Writes the shard (see `OutputDir.write_shard`); returns its done-marker record."""
        emb = tok = None
        if dims.get("emb") is not None:
            emb = np.concatenate(self.emb) if self.emb else np.zeros((0, *dims["emb"]), np.float32)
            if cfg.normalize:  # unit rows, in float32 before any float16 cast
                emb = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
        if dims.get("tokens") is not None:
            tok = np.concatenate(self.tokens) if self.tokens else np.zeros((0, *dims["tokens"]), np.float32)
        k = self.shard.index
        record = {"shard": k, "rows": len(self.meta.get("id", [])), "items": len(self.shard.items),
                  "errors": self.failures, "ids": [it.id for it in self.shard.items], "keys": self.shard.keys}
        return out.write_shard(k, self.meta, emb, tok, record, cfg.dtype)


# --------------------------------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------------------------------


def _batches(shards: Iterable[Shard], batch_size: int) -> Iterator[tuple[Shard, bool, list[Item]]]:
    # Batches restart at every shard's first item: a shard's batches (hence its bits) do not depend on what ran before.
    for shard in shards:
        starts = range(0, len(shard.items), batch_size)
        for start in starts:
            yield shard, start == starts[-1], shard.items[start:start + batch_size]


def _make_pool(cfg: EmbedConfig) -> Executor:
    if cfg.executor == "process":
        import multiprocessing

        # spawn: forking a process that already runs torch's thread pool can deadlock the child
        return ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("spawn"))
    return ThreadPoolExecutor(cfg.workers, thread_name_prefix="siglite-decode")


def run_shards(step, shards: Iterable[Shard], out: OutputDir, dims: dict,
               on_batch: Callable[[int], None] | None = None) -> Iterator[dict]:
    """Encodes and writes shards; yields each shard's record as soon as it is on disk.

    Workers prepare up to ``2 * workers`` batches ahead (the bounded queue) while this thread runs the engine, so the
    engine waits only when decoding is the bottleneck.
    """
    cfg = step.cfg
    shards = list(shards)
    for shard in shards:
        if not shard.items:  # a slot left over when inputs were removed: an empty, finished shard
            yield ShardBuffer(shard).write(out, cfg, dims)
    ahead = max(2, 2 * cfg.workers)
    batches = _batches(shards, cfg.batch_size)
    window: deque = deque()
    buffers: dict[int, ShardBuffer] = {}
    with _make_pool(cfg) as pool:
        try:
            def fill():
                while len(window) < ahead:
                    nxt = next(batches, None)
                    if nxt is None:
                        return
                    shard, last, items = nxt
                    window.append((shard, last, len(items), step.submit(pool, items)))

            fill()
            while window:
                shard, last, n, future = window.popleft()
                prep = future.result()
                fill()
                buf = buffers.setdefault(shard.index, ShardBuffer(shard))
                buf.add(prep, *step.encode(prep))
                if on_batch:
                    on_batch(n)
                if last:
                    yield buffers.pop(shard.index).write(out, cfg, dims)
        finally:
            for *_, future in window:
                future.cancel()

