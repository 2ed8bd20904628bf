"""`embed`: images (a folder, glob, list, WebDataset tars, parquet) or texts to sharded embeddings on disk.

Output layout (the clip-retrieval / img2dataset convention, so vector-index tools read it as is)::

    DIR/img_emb/part-00000.npy        (N, D) float32 or float16 pooled embeddings (text_emb/ for --text)
    DIR/metadata/part-00000.parquet   N rows, aligned with the embeddings: id, key, image_path, width, height
                                      (id, line, caption for texts)
    DIR/tokens/part-00000.npy         (N, T, D) last_hidden_state, with tokens=True (VLM pipelines)
    DIR/done/part-00000.json          written last: the shard is complete (rows, errors)
    DIR/manifest.json                 model, engine, precision, preprocessing, dims, counts, settings hash
    DIR/errors.jsonl                  one line per unreadable input: id, key, source, reason

The job is cut into fixed shards: shard k holds items ``[k*R, (k+1)*R)`` of the source's ordered list and is always
encoded in the same engine batches (aligned to the shard start). Every file is written to a temporary name and renamed,
and a shard counts as done only once its marker exists, so a job killed at any point and run again recomputes exactly
the missing shards, and the result equals an uninterrupted run bit for bit. The same shard function runs on Ray actors
(`siglite.tasks.embed_ray`), which is why both paths give identical rows.

Decoding and preprocessing run in a pool of worker threads that keeps a bounded number of batches in flight ahead of
the engine. Threads, not processes: PIL and OpenCV release the GIL while decoding and resizing, and on this CPU a
thread pool matched or beat a process pool, which also pays for pickling every pixel batch back (measured with
``benchmarks/embed_throughput.py --executor process``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections import deque
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import numpy as np

from ..errors import ImageError, SigliteError
from ..preprocess.image import PREPROCESS, ImageConfig, decode
from ..preprocess import naflex
from .sources import Item, Source, items_digest, open_source, require_pyarrow

if TYPE_CHECKING:
    from ..pipeline import Model

MANIFEST = "manifest.json"
ERRORS = "errors.jsonl"
EMB_DIRS = {"image": "img_emb", "text": "text_emb"}
METADATA_DIR, TOKENS_DIR, DONE_DIR = "metadata", "tokens", "done"
DTYPES = ("float32", "float16")
EXECUTORS = ("thread", "process")
DEFAULT_SHARD_SIZE = 10_000
DEFAULT_BATCH_SIZE = 32
MANIFEST_VERSION = 1
# Metadata columns per modality (name, pyarrow type name); rows are aligned with the embedding rows.
METADATA_COLUMNS = {
    "image": (("id", "int64"), ("key", "string"), ("image_path", "string"), ("width", "int32"), ("height", "int32")),
    "text": (("id", "int64"), ("line", "int32"), ("caption", "string")),
}
_MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".onnx", ".xml", ".txt")


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


@dataclass(frozen=True)
class EmbedConfig:
    """How a job runs. preprocess, tokens, dtype and shard_size change the output (they are in the settings hash);
    batch_size, workers and executor only change the speed."""

    preprocess: str = "resize"
    tokens: bool = False
    dtype: str = "float32"
    shard_size: int = DEFAULT_SHARD_SIZE
    batch_size: int = DEFAULT_BATCH_SIZE
    workers: int = field(default_factory=default_workers)
    executor: str = "thread"

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


def plan_shards(items: list[Item], shard_size: int) -> list[Shard]:
    """Shard k = items [k*R, (k+1)*R): fixed by the item order alone, so every run and every worker agrees."""
    return [Shard(k, items[start:start + shard_size]) for k, start in enumerate(range(0, len(items), shard_size))]


def part_name(index: int) -> str:
    return f"part-{index:05d}"


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


def job_settings(model: Model, source: Source, items: list[Item], cfg: EmbedConfig) -> dict:
    """Everything that decides the output's content; a resumed job must match it exactly."""
    settings = {
        "modality": source.modality,
        "model": model_fingerprint(model),
        "engine": model.engine.name,
        "precision": model.engine.precision,
        "dtype": cfg.dtype,
        "shard_size": cfg.shard_size,
        "items": len(items),
        "items_sha256": items_digest(items),
    }
    if source.modality == "image":
        settings.update(preprocess=cfg.preprocess, tokens=cfg.tokens, image=model.image_config.to_dict(),
                        max_pixels=model.max_pixels, background=list(model.background))
    else:
        settings.update(tokenizer=model.tokenizer.settings())
    return settings


def _short(value) -> str:
    return f"{value[:12]}..." if isinstance(value, str) and len(value) > 16 else repr(value)


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


# The order in which a settings mismatch is reported: what the user most likely changed first.
_SETTINGS_ORDER = ("modality", "model", "engine", "precision", "preprocess", "tokens", "dtype", "shard_size", "items")


def _first_difference(old: dict, new: dict, prefix: str = "") -> str:
    rank = {k: i for i, k in enumerate(_SETTINGS_ORDER)}
    for key in sorted(set(old) | set(new), key=lambda k: (rank.get(k, len(rank)), k)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = _first_difference(a, b, f"{prefix}{key}.")
            if found:
                return found
        elif a != b:
            return f"{prefix}{key}: {_short(a)} there, {_short(b)} now"
    return ""


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

    def submit(self, pool: Executor, items: list[Item]) -> Future:
        m = self.model
        return pool.submit(prepare_images, self.source, items, m.image_config, self.cfg.preprocess, m.max_pixels,
                           m.background)

    def encode(self, prep: Prepared) -> tuple[np.ndarray | None, np.ndarray | None]:
        if len(prep.inputs) == 0:
            return None, None
        return self.model.engine.encode_image(prep.inputs, tokens=self.cfg.tokens)

    def probe(self) -> dict:
        """Output dims from one blank image (needed to write a shard in which every image failed)."""
        c = self.model.image_config
        pooled, hidden = self.model.engine.encode_image(np.zeros((1, 3, c.height, c.width), np.float32),
                                                        tokens=self.cfg.tokens)
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
                    background: tuple, pad_to: int | None) -> Prepared:
    """`prepare_images` for NaFlex models: each image at its own aspect ratio, the batch padded to its longest."""
    items_ok, failures = [], []
    meta = {name: [] for name, _ in METADATA_COLUMNS["image"]}
    for item in items:
        try:
            rgb = decode(source.load(item), max_pixels=max_pixels, background=background)
            items_ok.append(naflex.preprocess(rgb, cfg))
        except ImageError as exc:
            failures.append({"id": item.id, "key": item.key, "source": item.path, "reason": exc.reason})
            continue
        for name, value in zip(meta, (item.id, item.key, item.path, rgb.shape[1], rgb.shape[0])):
            meta[name].append(value)
    return Prepared(naflex.pad(items_ok, cfg.patch_size**2 * 3, pad_to), meta, failures)


class PatchStep(ImageStep):
    """Pooled embeddings of a NaFlex model at the checkpoint's patch budget (`model.image_config.max_num_patches`).
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
                           getattr(m.engine, "num_patches", None))

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


# --------------------------------------------------------------------------------------------------------------------
# Output folder
# --------------------------------------------------------------------------------------------------------------------


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """write(tmp) then rename over path: readers and resumed jobs see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _is_temp(path: Path) -> bool:
    return path.name.startswith(".") and ".tmp-" in path.name


def _write_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path):
        with open(tmp, "wb") as f:
            np.save(f, array)

    _atomic_write(path, write)


def _write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


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


class OutputDir:
    """The files of one job's output folder."""

    def __init__(self, path: str | os.PathLike, modality: str):
        self.path = Path(path)
        self.modality = modality
        self.emb_dir = self.path / EMB_DIRS[modality]

    def emb(self, k: int) -> Path:
        return self.emb_dir / f"{part_name(k)}.npy"

    def metadata(self, k: int) -> Path:
        return self.path / METADATA_DIR / f"{part_name(k)}.parquet"

    def tokens(self, k: int) -> Path:
        return self.path / TOKENS_DIR / f"{part_name(k)}.npy"

    def marker(self, k: int) -> Path:
        return self.path / DONE_DIR / f"{part_name(k)}.json"

    def read_manifest(self) -> dict | None:
        path = self.path / MANIFEST
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SigliteError(f"{path}: unreadable manifest ({exc})") from None

    def check(self, settings: dict) -> dict | None:
        """Returns the manifest of the job already in the folder (None for a new or empty folder).

        Raises:
            SigliteError: If the folder holds another job (one line naming the first differing setting), or other files.
        """
        old = self.read_manifest()
        if old is None:
            if self.path.exists() and any(not _is_temp(p) for p in self.path.iterdir()):
                raise SigliteError(f"{self.path} is not empty and has no {MANIFEST}; use a new or empty --out folder")
        elif old.get("settings_hash") != settings_hash(settings):
            diff = _first_difference(old.get("settings", {}), settings) or "settings hash differs"
            raise SigliteError(f"{self.path} holds embeddings made with other settings ({diff}); use another "
                               f"--out or delete it")
        return old

    def claim(self, manifest: dict) -> None:
        """Creates the folders of a checked job, manifest first (a folder with a manifest is resumable)."""
        self.path.mkdir(parents=True, exist_ok=True)
        if self.read_manifest() is None:
            _write_text(self.path / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        dirs = [self.path, self.emb_dir, self.path / METADATA_DIR, self.path / DONE_DIR]
        if manifest["dims"].get("tokens"):
            dirs.append(self.path / TOKENS_DIR)
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
            for stale in filter(_is_temp, d.iterdir()):  # left by a killed run
                stale.unlink(missing_ok=True)

    def is_done(self, k: int, tokens: bool) -> bool:
        paths = [self.marker(k), self.metadata(k), self.emb(k)]
        return all(p.is_file() for p in paths) and (not tokens or self.tokens(k).is_file())

    def write_shard(self, buf: ShardBuffer, dtype: str, dims: dict) -> dict:
        """Writes a shard's files, the done marker last; returns the marker's record."""
        import pyarrow as pa

        k = buf.shard.index
        n = len(buf.meta.get("id", []))
        columns = METADATA_COLUMNS[self.modality]
        table = pa.table({name: pa.array(buf.meta.get(name, []), type=getattr(pa, t)()) for name, t in columns})
        if dims.get("emb") is not None:
            emb = np.concatenate(buf.emb) if buf.emb else np.zeros((0, *dims["emb"]), np.float32)
            _write_npy(self.emb(k), emb.astype(dtype, copy=False))
        if dims.get("tokens") is not None:
            tok = np.concatenate(buf.tokens) if buf.tokens else np.zeros((0, *dims["tokens"]), np.float32)
            _write_npy(self.tokens(k), tok.astype(dtype, copy=False))
        _atomic_write(self.metadata(k), lambda tmp: require_pyarrow().write_table(table, tmp))
        record = {"shard": k, "rows": n, "items": len(buf.shard.items), "errors": buf.failures}
        _write_text(self.marker(k), json.dumps(record) + "\n")
        return record

    def finish(self, manifest: dict, n_shards: int) -> dict:
        """Writes errors.jsonl and the final manifest from the shard markers; returns the counts."""
        rows = errors = 0
        lines = []
        for k in range(n_shards):
            record = json.loads(self.marker(k).read_text())
            rows += record["rows"]
            errors += len(record["errors"])
            lines += [json.dumps(e, ensure_ascii=False) + "\n" for e in record["errors"]]
        _write_text(self.path / ERRORS, "".join(lines))
        counts = {"items": manifest["settings"]["items"], "embedded": rows, "errors": errors, "shards": n_shards}
        _write_text(self.path / MANIFEST, json.dumps({**manifest, "counts": counts, "complete": True}, indent=2) + "\n")
        return counts


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
                    yield out.write_shard(buffers.pop(shard.index), cfg.dtype, dims)
        finally:
            for *_, future in window:
                future.cancel()


class Progress:
    """items/s and ETA on stderr: a tqdm bar when tqdm is installed, else a line redrawn at most once a second."""

    def __init__(self, total: int, done: int, unit: str, enabled: bool = True):
        self.total, self.done, self.unit, self.enabled = total, done, unit, enabled
        self.start, self.start_done, self.last = time.perf_counter(), done, 0.0
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=done, unit=unit, desc="embed", file=sys.stderr, smoothing=0.05,
                                dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and (time.perf_counter() - self.last >= 1.0 or self.done == self.total):
            self.last = time.perf_counter()
            rate = (self.done - self.start_done) / max(self.last - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            eta_s = "?" if eta == float("inf") else time.strftime("%H:%M:%S", time.gmtime(eta))
            print(f"\rembed {self.done}/{self.total} {self.unit}  {rate:.1f} {self.unit}/s  ETA {eta_s}   ",
                  end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            print(file=sys.stderr)


def embed(model: Model, src: str | os.PathLike, out: str | os.PathLike, *, text: bool = False,
          column: str | None = None, preprocess: str = "resize", tokens: bool = False, dtype: str = "float32",
          shard_size: int = DEFAULT_SHARD_SIZE, batch_size: int | None = None, workers: int | None = None,
          executor: str = "thread", distributed: str | None = None, load_args: dict | None = None,
          progress: bool = True) -> dict:
    """Embeds every image (or, with text=True, every line) of SRC into sharded files under OUT; resumable.

    Args:
        model: The loaded model (also identifies the job: its fingerprint goes into the settings hash).
        src: Folder, glob, list file, WebDataset tar(s) or parquet file; a text file with text=True.
        out: Output folder (new, empty, or holding this same job to resume).
        text: Embed the lines of SRC as captions/labels instead of images.
        column: Parquet column holding the image bytes or paths (default: guessed from the names).
        preprocess: "resize" (transformers' SigLIP processor) or "letterbox".
        tokens: Also write last_hidden_state (N, T, D) per shard under tokens/.
        dtype: "float32" or "float16" for the written arrays.
        shard_size: Items per shard (R): the unit of resume and of Ray work.
        batch_size: Engine batch size (default 32).
        workers: Decode/preprocess workers (default: CPU count, at most 8); per actor with Ray.
        executor: "thread" (default, measured faster here) or "process" decode workers.
        distributed: None, or "ray" to run the shards on a Ray cluster (RAY_ADDRESS, else a local one).
        load_args: How Ray workers load the model: kwargs of `siglite.load` plus "name_or_path"
            (default: this model's folder, engine and precision).
        progress: Show a progress bar on stderr.

    Returns:
        A flat record: out, modality, items, embedded, errors, shards, shards_run, seconds, items_per_s, ...

    Raises:
        SigliteError: On a bad SRC, option or model, or when OUT holds a job with other settings.
    """
    t0 = time.perf_counter()
    if distributed not in (None, "ray"):
        raise SigliteError(f"unknown distributed backend {distributed!r}; the only one is 'ray'")
    if text and tokens:
        raise SigliteError("--tokens applies to images, not to --text")
    cfg = EmbedConfig(preprocess=preprocess, tokens=tokens, dtype=dtype, shard_size=shard_size,
                      batch_size=batch_size or DEFAULT_BATCH_SIZE, workers=workers or default_workers(),
                      executor=executor)
    require_pyarrow()
    source = open_source(src, text=text, column=column)
    items = source.items()
    if not items:
        raise SigliteError(f"{src}: no {'lines' if text else 'images'} found")
    step = make_step(model, source, cfg)
    settings = job_settings(model, source, items, cfg)
    output = OutputDir(Path(out).absolute(), source.modality)
    shards = plan_shards(items, cfg.shard_size)
    old = output.check(settings)
    manifest = _manifest(model, source, cfg, settings, old["dims"] if old else step.probe(), len(shards))
    output.claim(manifest)
    dims = manifest["dims"]
    pending = [s for s in shards if not output.is_done(s.index, cfg.tokens)]
    unit = "img" if source.modality == "image" else "text"
    bar = Progress(len(items), len(items) - sum(len(s.items) for s in pending), unit, progress)
    try:
        if distributed == "ray":
            from .embed_ray import run_shards_ray

            records = run_shards_ray(load_args or _load_args(model), source, pending, cfg, str(output.path), dims,
                                     workers=workers, on_shard=lambda r: bar.update(r["items"]))
        else:
            records = list(run_shards(step, pending, output, dims, on_batch=bar.update))
    finally:
        bar.close()
    counts = output.finish(manifest, len(shards))
    seconds = time.perf_counter() - t0
    run_items = sum(r["items"] for r in records)
    return {"out": str(output.path), "modality": source.modality, **counts, "shards_run": len(records),
            "items_run": run_items, "seconds": round(seconds, 3),
            "items_per_s": round(run_items / seconds, 2) if seconds > 0 else 0.0,
            "settings_hash": manifest["settings_hash"][:16]}


def _load_args(model: Model) -> dict:
    return {"name_or_path": os.path.abspath(model.folder), "engine": model.engine.name, "dtype": model.engine.precision}


def _manifest(model: Model, source: Source, cfg: EmbedConfig, settings: dict, dims: dict, n_shards: int) -> dict:
    from .. import __version__

    info = model.describe()
    folder = os.path.abspath(model.folder) if model.folder else None
    return {
        "format": "siglite-embed", "manifest_version": MANIFEST_VERSION, "siglite_version": __version__,
        "modality": source.modality, "model": {"name": info["name"], "folder": folder,
                                               "fingerprint": settings["model"], "model_type": info["model_type"]},
        "engine": model.engine.name, "precision": model.engine.precision,
        "preprocess": {"mode": cfg.preprocess, "image": info["image"]} if source.modality == "image" else None,
        "tokenizer": info["tokenizer"] if source.modality == "text" else None,
        "logit_scale": info["logit_scale"], "logit_bias": info["logit_bias"],
        "source": source.describe(), "dtype": cfg.dtype, "shard_size": cfg.shard_size, "shards": n_shards,
        "dims": dims, "outputs": {"emb": EMB_DIRS[source.modality], "metadata": METADATA_DIR,
                                  "tokens": TOKENS_DIR if dims.get("tokens") else None},
        "settings": settings, "settings_hash": settings_hash(settings), "counts": None, "complete": False,
    }


