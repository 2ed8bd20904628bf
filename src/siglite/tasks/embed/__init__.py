"""`embed`: images (a folder, glob, list, WebDataset tars, parquet) or texts to sharded embeddings on disk.

The package, bottom up (no module imports one above it):

* `store`: the output folder's layout, written here and read by `siglite.tasks.search` (the only place it is spelled);
* `runner`: job settings, shard plan, per-modality steps and the batch pipeline that writes a shard;
* `local` / `ray`: run the pending shards in this process or on Ray actors;
* this module: `embed`, the job: check the folder, plan (resume and incremental runs), run, finish.

Resume and incremental runs: every finished shard's marker lists the inputs it covers. A run lists SRC again, keeps
the shards already done, and cuts the inputs not covered yet into shards that fill the unfinished shard numbers first,
then new ones. Run again after a kill, it recomputes exactly the missing shards (bit-identical to an uninterrupted run);
run after images were added, it embeds only the new ones into new shards; inputs gone from SRC are reported (their rows
stay). The settings (model, engine, precision, preprocessing, dtype, shard size, --normalize, --tokens) must match.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import SigliteError
from ...data.sources import ListSource, Source, items_digest, open_source, require_pyarrow
from .runner import (DEFAULT_BATCH_SIZE, DEFAULT_SHARD_SIZE, DTYPES, EmbedConfig, Shard, default_workers, identities,
                     job_settings, make_step, model_fingerprint)
from .store import (EMB_DIRS, MANIFEST, MANIFEST_VERSION, METADATA_COLUMNS, METADATA_DIR, TOKENS_DIR, EmbeddingStore,
                    OutputDir, open_store, part_name, settings_hash)

if TYPE_CHECKING:
    from ...pipeline import Model

__all__ = ["embed", "EmbedConfig", "EmbedInterrupted", "DTYPES", "DEFAULT_SHARD_SIZE", "DEFAULT_BATCH_SIZE",
           "EMB_DIRS", "MANIFEST", "METADATA_COLUMNS", "EmbeddingStore", "open_store", "part_name", "settings_hash",
           "model_fingerprint"]

REMOVED_LISTED = 5  # removed inputs named in the record (all are counted)


class EmbedInterrupted(KeyboardInterrupt):
    """Ctrl-C during `embed`: `done` of `total` shards are on disk in `out`; the same call again finishes the job."""

    def __init__(self, out: Path, done: int, total: int):
        super().__init__(f"{done}/{total} shards done")
        self.out, self.done, self.total = out, done, total


def embed(model: Model, src: str | os.PathLike, out: str | os.PathLike, *, text: bool = False,
          column: str | None = None, preprocess: str = "resize", tokens: bool = False, normalize: bool = False,
          dtype: str = "float32", shard_size: int = DEFAULT_SHARD_SIZE, batch_size: int | None = None,
          workers: int | None = None, executor: str = "thread", distributed: str | None = None,
          load_args: dict | None = None, progress: bool = True, layer: int | list[int] | None = None,
          post_norm: bool = False) -> dict:
    """Embeds every image (or, with text=True, every line) of SRC into sharded files under OUT; resumable and
    incremental.

    Args:
        model: The loaded model (also identifies the job: its fingerprint goes into the settings hash).
        src: Folder, glob, list file, WebDataset tar(s) or parquet file; a text file with text=True.
        out: Output folder (new, empty, or holding this same job to resume or extend).
        text: Embed the lines of SRC as captions/labels instead of images.
        column: Parquet column holding the image bytes or paths (default: guessed from the names).
        preprocess: "resize" (transformers' SigLIP processor) or "letterbox".
        tokens: Also write last_hidden_state (N, T, D) per shard under tokens/.
        normalize: Write unit-length pooled rows (L2-normalised; the manifest says ``"normalized": true``), as
            vector indexes expect.
        dtype: "float32" or "float16" for the written arrays.
        shard_size: Items per shard (R): the unit of resume and of Ray work.
        batch_size: Engine batch size (default 32).
        workers: Decode/preprocess workers (default: CPU count, at most 8); per actor with Ray.
        executor: "thread" (default, measured faster here) or "process" decode workers.
        distributed: None, or "ray" to run the shards on a Ray cluster (RAY_ADDRESS, else a local one).
        load_args: How Ray workers load the model: kwargs of `siglite.load` plus "name_or_path"
            (default: this model's folder, engine and precision).
        progress: Show a progress bar on stderr (when stderr is a terminal).
        layer: With tokens: write hidden_states[layer] (see `Model.image_features`) instead of last_hidden_state.
        post_norm: With layer: apply the final LayerNorm to it.

    Returns:
        A flat record: out, modality, items, embedded, errors, shards, shards_run, items_run, new, removed, seconds,
        items_per_s, ...

    Raises:
        SigliteError: On a bad SRC, option or model, or when OUT holds a job with other settings.
        EmbedInterrupted: On Ctrl-C, after the shards finished so far are on disk.
    """
    from ...progress import bar as progress_bar

    t0 = time.perf_counter()
    if distributed not in (None, "ray"):
        raise SigliteError(f"unknown distributed backend {distributed!r}; the only one is 'ray'")
    if text and tokens:
        raise SigliteError("--tokens applies to images, not to --text")
    if text and layer is not None:
        raise SigliteError("--layer applies to image tokens, not to --text")
    cfg = EmbedConfig(preprocess=preprocess, tokens=tokens, normalize=normalize, dtype=dtype, shard_size=shard_size,
                      batch_size=DEFAULT_BATCH_SIZE if batch_size is None else batch_size,
                      workers=workers or default_workers(), executor=executor,
                      layer=layer if layer is None or isinstance(layer, int) else tuple(layer), post_norm=post_norm)
    require_pyarrow()
    output = OutputDir(Path(out).absolute(), "text" if text else "image")
    _check_out_path(output.path)  # before listing SRC, which can take a while
    source = open_source(src, text=text, column=column)
    items = source.items()
    if not items:
        raise SigliteError(f"{src}: no {'lines' if text else 'images'} found")
    _check_list_source(source, items)
    step = make_step(model, source, cfg)
    settings = job_settings(model, source, cfg)
    old = output.check(settings)

    done = output.done_records(int(old["shards"]), cfg.tokens, old["dims"].get("emb") is not None) if old else {}
    keys = identities(items, source.modality)
    covered = {key for record in done.values() for key in record["keys"]}
    used_ids = {i for record in done.values() for i in record["ids"]}
    current = set(keys)
    removed = sorted(covered - current)
    new_items, new_keys = [], []
    next_id = max(max(used_ids, default=-1), len(items) - 1) + 1
    for item, key in zip(items, keys):
        if key in covered:
            continue
        if item.id in used_ids:  # an input inserted before older ones: a fresh id (ids are never reused)
            item, next_id = replace(item, id=next_id), next_id + 1
        new_items.append(item)
        new_keys.append(key)
    old_shards = int(old["shards"]) if old else 0
    holes = [k for k in range(old_shards) if k not in done]
    shards = _plan(new_items, new_keys, cfg.shard_size, holes, old_shards)
    n_shards = max([old_shards, *(s.index + 1 for s in shards)])

    manifest = _manifest(model, source, cfg, settings, old["dims"] if old else step.probe(), n_shards, len(items))
    output.claim(manifest)
    dims = manifest["dims"]
    unit = "img" if source.modality == "image" else "text"
    covered_now = sum(r["items"] for r in done.values())
    records: list[dict] = []
    bar = progress_bar(covered_now + len(new_items), "embed", unit, initial=covered_now, quiet=not progress)
    try:
        if distributed == "ray" and shards:
            from .ray import run_shards_ray

            records = run_shards_ray(load_args or _load_args(model), source, shards, cfg, str(output.path), dims,
                                     workers=workers, on_shard=lambda r: (records.append(r), bar(r["items"])))
        else:
            from .runner import run_shards

            for record in run_shards(step, shards, output, dims, on_batch=bar):
                records.append(record)
    except KeyboardInterrupt:
        bar.close()
        finished = len(done) + len(records)
        raise EmbedInterrupted(output.path, finished, n_shards) from None
    finally:
        bar.close()
    counts = output.finish(manifest, n_shards)
    seconds = time.perf_counter() - t0
    run_items = sum(r["items"] for r in records)
    return {"out": str(output.path), "modality": source.modality, **counts, "shards_run": len(records),
            "items_run": run_items, "new": len(new_items) if old else 0, "removed": len(removed),
            "removed_keys": [k.split("\t")[0] for k in removed[:REMOVED_LISTED]], "seconds": round(seconds, 3),
            "items_per_s": round(run_items / seconds, 2) if seconds > 0 else 0.0,
            "settings_hash": manifest["settings_hash"][:16]}


def _check_out_path(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise SigliteError(f"--out {path}: is a file; give a folder")
    if not path.parent.is_dir():
        raise SigliteError(f"--out {path}: folder {path.parent} does not exist")


def _check_list_source(source: Source, items: list) -> None:
    """A text file taken as a list of image paths where none of the first lines is a file is almost surely a file of
    captions given without --text: say so instead of reporting every line as a missing image."""
    if isinstance(source, ListSource):
        head = items[:20]
        if not any(os.path.isfile(it.path) for it in head):
            raise SigliteError(f"{source.spec}: read as a list of image paths, but none of its first {len(head)} "
                               f"lines is a file; for a file of texts add --text")


def _plan(items: list, keys: list[str], shard_size: int, holes: list[int], first_new: int) -> list[Shard]:
    """Cuts `items` into shards of `shard_size`: the unfinished shard numbers of an earlier run first (so a resumed
    job rebuilds exactly the shards it planned), then new numbers. Holes left over get an empty shard."""
    slots = iter(holes)
    shards = []
    for start in range(0, len(items), shard_size):
        k = next(slots, None)
        if k is None:
            k, first_new = first_new, first_new + 1
        shards.append(Shard(k, items[start:start + shard_size], keys[start:start + shard_size]))
    shards += [Shard(k, [], []) for k in slots]
    return sorted(shards, key=lambda s: s.index)


def _load_args(model: Model) -> dict:
    return {"name_or_path": os.path.abspath(model.folder), "engine": model.engine.name, "dtype": model.engine.precision}


def _manifest(model: Model, source: Source, cfg: EmbedConfig, settings: dict, dims: dict, n_shards: int,
              n_items: int) -> dict:
    from ... import __version__

    info = model.describe()
    folder = os.path.abspath(model.folder) if model.folder else None
    return {
        "format": "siglite-embed", "manifest_version": MANIFEST_VERSION, "siglite_version": __version__,
        "modality": source.modality, "model": {"name": info["name"], "folder": folder,
                                               "fingerprint": settings["model"], "model_type": info["model_type"]},
        "engine": model.engine.name, "precision": model.engine.precision,
        "preprocess": {"mode": cfg.preprocess, "image": info["image"]} if source.modality == "image" else None,
        "tokenizer": info["tokenizer"] if source.modality == "text" else None,
        "logit_scale": info["logit_scale"], "logit_bias": info["logit_bias"], "logits": info["logits"],
        "normalized": cfg.normalize,
        "source": {**source.describe(), "items": n_items, "items_sha256": items_digest(source.items())},
        "dtype": cfg.dtype, "shard_size": cfg.shard_size, "shards": n_shards,
        "dims": dims, "outputs": {"emb": EMB_DIRS[source.modality], "metadata": METADATA_DIR,
                                  "tokens": TOKENS_DIR if dims.get("tokens") else None},
        "settings": settings, "settings_hash": settings_hash(settings), "counts": None, "complete": False,
    }
