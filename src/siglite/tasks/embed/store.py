"""The output folder of `siglite embed`: its layout, written by the runner and read by `search`. The only place the
layout is spelled.

Layout (the clip-retrieval / img2dataset convention, so vector-index tools read it as is)::

    DIR/img_emb/part-00000.npy        (N, D) float32 or float16 pooled embeddings (text_emb/ for --text);
                                      unit rows with --normalize (manifest "normalized": true)
    DIR/metadata/part-00000.parquet   N rows, aligned with the embeddings: id, key, source, width, height
                                      (id, line, caption for texts)
    DIR/tokens/part-00000.npy         (N, T, D) last_hidden_state, with tokens=True (VLM pipelines)
    DIR/done/part-00000.json          written last: the shard is complete (rows, its inputs, errors)
    DIR/manifest.json                 model, engine, precision, preprocessing, dims, counts, settings hash, complete
    DIR/errors.jsonl                  one line per unreadable input: id, key, source, reason

Every file is written to a temporary name and renamed, and a shard counts as done only once its marker exists.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import SigliteError
from ...fileio import atomic_write, write_npy, write_text
from ...data.sources import require_pyarrow

MANIFEST = "manifest.json"
ERRORS = "errors.jsonl"
EMB_DIRS = {"image": "img_emb", "text": "text_emb"}
METADATA_DIR, TOKENS_DIR, DONE_DIR = "metadata", "tokens", "done"
MANIFEST_VERSION = 2  # 2: settings no longer pin the input list (incremental runs); markers list their inputs
# Metadata columns per modality (name, pyarrow type name); rows are aligned with the embedding rows.
METADATA_COLUMNS = {
    "image": (("id", "int64"), ("key", "string"), ("source", "string"), ("width", "int32"), ("height", "int32")),
    "text": (("id", "int64"), ("line", "int32"), ("caption", "string")),
}


def part_name(index: int) -> str:
    return f"part-{index:05d}"


def _is_temp(path: Path) -> bool:
    return path.name.startswith(".") and ".tmp-" in path.name


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def _short(value) -> str:
    return f"{value[:12]}..." if isinstance(value, str) and len(value) > 16 else repr(value)


# The order in which a settings mismatch is reported: what the user most likely changed first.
_SETTINGS_ORDER = ("modality", "model", "engine", "precision", "preprocess", "tokens", "normalize", "dtype",
                   "shard_size")


def first_difference(old: dict, new: dict, prefix: str = "") -> str:
    rank = {k: i for i, k in enumerate(_SETTINGS_ORDER)}
    for key in sorted(set(old) | set(new), key=lambda k: (rank.get(k, len(rank)), k)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = first_difference(a, b, f"{prefix}{key}.")
            if found:
                return found
        elif a != b:
            return f"{prefix}{key}: {_short(a)} there, {_short(b)} now"
    return ""


def read_manifest(path: Path) -> dict | None:
    """The folder's manifest, None when there is none."""
    file = path / MANIFEST
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise SigliteError(f"{file}: unreadable manifest ({exc})") from None


class OutputDir:
    """The files of one job's output folder (the write side)."""

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
        return read_manifest(self.path)

    def check(self, settings: dict) -> dict | None:
        """Returns the manifest of the job already in the folder (None for a new or empty folder).

        Raises:
            SigliteError: If OUT is a file or its parent is missing, or the folder holds another job (one line naming
                the first differing setting), a job of an older layout, or other files.
        """
        if self.path.exists() and not self.path.is_dir():
            raise SigliteError(f"--out {self.path}: is a file; give a folder")
        if not self.path.parent.is_dir():
            raise SigliteError(f"--out {self.path}: folder {self.path.parent} does not exist")
        old = self.read_manifest()
        if old is None:
            if self.path.exists() and any(not _is_temp(p) for p in self.path.iterdir()):
                raise SigliteError(f"{self.path} is not empty and has no {MANIFEST}; use a new or empty --out folder")
        elif old.get("manifest_version") != MANIFEST_VERSION:
            raise SigliteError(f"{self.path} was written by another siglite version (manifest version "
                               f"{old.get('manifest_version')}, this one reads {MANIFEST_VERSION}); embed into a new "
                               f"--out folder")
        elif old.get("settings_hash") != settings_hash(settings):
            diff = first_difference(old.get("settings", {}), settings) or "settings hash differs"
            raise SigliteError(f"{self.path} holds embeddings made with other settings ({diff}); an incremental run "
                               f"needs the same settings: use another --out or delete it")
        return old

    def claim(self, manifest: dict) -> None:
        """Creates the folders and writes the manifest with ``complete: false`` (a folder with a manifest is
        resumable, and `search` refuses it until the run finishes)."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_text(self.path / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        dirs = [self.path, self.emb_dir, self.path / METADATA_DIR, self.path / DONE_DIR]
        if manifest["dims"].get("tokens"):
            dirs.append(self.path / TOKENS_DIR)
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
            for stale in filter(_is_temp, d.iterdir()):  # left by a killed run
                stale.unlink(missing_ok=True)

    def is_done(self, k: int, tokens: bool, emb: bool = True) -> bool:
        # emb=False: a layer-tap job writes tokens only (no pooled output without the whole tower)
        paths = [self.marker(k), self.metadata(k)] + ([self.emb(k)] if emb else [])
        return all(p.is_file() for p in paths) and (not tokens or self.tokens(k).is_file())

    def done_records(self, n_shards: int, tokens: bool, emb: bool = True) -> dict[int, dict]:
        """Shard index -> done-marker record, for the finished shards among the first `n_shards`."""
        return {k: json.loads(self.marker(k).read_text()) for k in range(n_shards) if self.is_done(k, tokens, emb)}

    def write_shard(self, k: int, meta: dict[str, list], emb: np.ndarray | None, tokens: np.ndarray | None,
                    record: dict, dtype: str) -> dict:
        """Writes a shard's files, the done marker last; returns the marker's record."""
        import pyarrow as pa

        columns = METADATA_COLUMNS[self.modality]
        table = pa.table({name: pa.array(meta.get(name, []), type=getattr(pa, t)()) for name, t in columns})
        if emb is not None:
            write_npy(self.emb(k), emb.astype(dtype, copy=False))
        if tokens is not None:
            write_npy(self.tokens(k), tokens.astype(dtype, copy=False))
        atomic_write(self.metadata(k), lambda tmp: require_pyarrow().write_table(table, tmp))
        write_text(self.marker(k), json.dumps(record, ensure_ascii=False) + "\n")
        return record

    def finish(self, manifest: dict, n_shards: int) -> dict:
        """Writes errors.jsonl and the final manifest (``complete: true``) from the shard markers; returns counts."""
        items = rows = errors = 0
        lines = []
        for k in range(n_shards):
            record = json.loads(self.marker(k).read_text())
            items += record["items"]
            rows += record["rows"]
            errors += len(record["errors"])
            lines += [json.dumps(e, ensure_ascii=False) + "\n" for e in record["errors"]]
        write_text(self.path / ERRORS, "".join(lines))
        counts = {"items": items, "embedded": rows, "errors": errors, "shards": n_shards}
        write_text(self.path / MANIFEST, json.dumps({**manifest, "counts": counts, "complete": True}, indent=2) + "\n")
        return counts


# --------------------------------------------------------------------------------------------------------------------
# The read side (search, and anyone loading the output)
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class EmbeddingStore:
    """The finished shards of an embed output folder."""

    path: Path
    manifest: dict
    modality: str
    parts: list[tuple[Path, Path]]  # (embeddings .npy, metadata .parquet), shard order
    shards: int  # planned shards; len(parts) < shards while a run is unfinished

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete")) and len(self.parts) == self.shards

    @property
    def rows(self) -> int:
        return sum(np.load(emb, mmap_mode="r").shape[0] for emb, _ in self.parts)


def open_store(out: str | os.PathLike, *, partial: bool = False) -> EmbeddingStore:
    """Opens an embed output folder for reading.

    Args:
        out: The folder `siglite embed` wrote.
        partial: Accept an unfinished output (a run still going, or killed) and read its finished shards only;
            by default such a folder is refused, since a search over part of it silently misses the rest.

    Raises:
        SigliteError: If the folder has no manifest, no pooled embeddings, no finished shard, or is unfinished and
            `partial` is false.
    """
    path = Path(out)
    manifest = read_manifest(path)
    if manifest is None:
        raise SigliteError(f"{path}: no {MANIFEST}; not an output folder of `siglite embed`")
    modality = manifest.get("modality", "image")
    if not (manifest.get("dims") or {}).get("emb"):
        raise SigliteError(f"{path}: holds token outputs only (no pooled embeddings to search)")
    n = int(manifest.get("shards", 0))
    parts = []
    for k in range(n):
        name = part_name(k)
        emb, meta = path / EMB_DIRS[modality] / f"{name}.npy", path / METADATA_DIR / f"{name}.parquet"
        if (path / DONE_DIR / f"{name}.json").is_file() and emb.is_file() and meta.is_file():
            parts.append((emb, meta))
    store = EmbeddingStore(path, manifest, modality, parts, n)
    if not store.complete and not partial:
        raise SigliteError(f"{path}: unfinished embed ({len(parts)}/{n} shards done); run the same `siglite embed` "
                           f"command again to finish it, or pass --partial to search the finished shards only")
    if not parts:
        raise SigliteError(f"{path}: no finished shards yet")
    return store


def load_args(manifest: dict) -> dict:
    """`siglite.load` arguments that reload the model an output was made with (its folder, engine, precision)."""
    model = manifest.get("model") or {}
    name = model.get("folder") if model.get("folder") and Path(model["folder"]).is_dir() else model.get("name")
    if not name:
        raise SigliteError("the manifest names no model; pass --model")
    engine = manifest.get("engine")
    # an exported folder's precision is fixed in its graphs; only the torch engines take one
    return {"name_or_path": name, "engine": engine,
            "dtype": manifest.get("precision") if engine in ("torch", "cuda") else None}
