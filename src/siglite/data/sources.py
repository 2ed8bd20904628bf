"""Inputs of `siglite embed`: everything a job reads, listed up front as a fixed, ordered list of `Item`s.

A source turns its SRC string into that list once (so shard k is the same items in every run and on every Ray
worker) and turns one item back into something `siglite.preprocess.image.decode` reads (a path or bytes). Kinds:

* ``files``: a folder (recursive, by image extension), a glob, or a single image; sorted by path.
* ``list``: a text file with one image path per line (relative paths are relative to the list's folder); file order.
* ``tar``: WebDataset shards (one ``.tar``, a glob or a brace list such as ``shards-{00000..00099}.tar``); tar order,
  samples grouped by ``__key__`` and their image member picked by extension; members are read back by byte offset.
* ``parquet``: a parquet file with a bytes column (binary, or a ``{bytes, path}`` struct as 🤗 datasets' Image) or a
  path column; row order.
* ``text``: a file of captions or labels, one per non-blank line (``siglite embed --text``).

Sources hold only strings and small tables, so they pickle to process pools and Ray actors.
"""

from __future__ import annotations

import glob
import hashlib
import os
import posixpath
import re
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ImageError, SigliteError

# The one list of image file extensions, for every folder reader (`embed` sources, calibration, evaluation sets): the
# union of what embed and the dataset readers listed before (jfif came from the latter). Formats PIL cannot read
# (HEIC without a plugin, ...) are still collected so that they are reported as failures instead of disappearing.
IMAGE_EXTS = ("jpg", "jpeg", "jpe", "jfif", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm", "pbm", "pnm",
              "jp2", "j2k", "avif", "heic", "heif", "ico", "tga")
# Column names tried, in order, when a parquet file's column is not given.
PARQUET_BYTES_COLUMNS = ("image", "jpg", "png", "webp", "bytes", "image_bytes", "img", "content")
PARQUET_PATH_COLUMNS = ("image_path", "path", "filepath", "file_path", "file", "filename", "url")
PARQUET_KEY_COLUMNS = ("key", "__key__", "id")
_GLOB_CHARS = re.compile(r"[*?\[]")
_BRACE_GROUP = re.compile(r"\{([^{}]*)\}")
_BRACE_RANGE = re.compile(r"(\d+)\.\.(\d+)")


@dataclass(frozen=True, slots=True)
class Item:
    """One input of a job.

    Attributes:
        id: Position in the source's full list (the row id in the output, stable across runs).
        key: Short name: path relative to the folder, tar ``__key__``, parquet key column or row number, text line.
        path: Where it came from, for metadata and errors: file path, ``shard.tar/member``, ``file.parquet#row``.
        ref: What `Source.load` needs to read it back (path, ``(offset, size)`` in a tar, parquet row, the text).
    """

    id: int
    key: str
    path: str
    ref: Any


class Source:
    """A listed input; subclasses fill `kind`, `_list` and `load`."""

    kind = ""
    modality = "image"

    def __init__(self, spec: str):
        self.spec = spec
        self._items: list[Item] | None = None

    def items(self) -> list[Item]:
        """The full ordered item list (computed once)."""
        if self._items is None:
            self._items = self._list()
        return self._items

    def _list(self) -> list[Item]:
        raise NotImplementedError

    def load(self, item: Item):
        """Returns what `decode` reads (a path or bytes), or the text; raises ImageError for an unreadable item."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"spec": os.path.abspath(self.spec), "kind": self.kind}

    def __getstate__(self):
        # The item list goes to workers per shard, not with the source; thread-local readers are rebuilt there.
        state = dict(self.__dict__)
        state["_items"] = None
        state.pop("_local", None)
        return state


def items_digest(items: list[Item]) -> str:
    """sha256 over every item's key and path: a changed input list must not resume into old shard boundaries."""
    h = hashlib.sha256()
    for it in items:
        h.update(f"{it.key}\t{it.path}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------------------------
# Files: folder, glob, single image, list of paths
# --------------------------------------------------------------------------------------------------------------------


def has_image_ext(name: str) -> bool:
    return name.rpartition(".")[2].lower() in IMAGE_EXTS if "." in name else False


class FileSource(Source):
    """Image files from a folder (recursive), a glob or one file, sorted by path."""

    kind = "files"

    def __init__(self, spec: str, paths: list[str] | None = None, root: str | None = None):
        super().__init__(spec)
        self._paths = paths
        self._root = root

    def _list(self) -> list[Item]:
        if self._root is not None:
            paths = []
            for dirpath, dirnames, filenames in os.walk(self._root):
                dirnames.sort()
                paths += [os.path.join(dirpath, f) for f in filenames if has_image_ext(f)]
        else:
            paths = list(self._paths or [])
        paths.sort()
        return [Item(i, self._key(p), p, p) for i, p in enumerate(paths)]

    def __getstate__(self):
        return {**super().__getstate__(), "_paths": None}  # workers get items, not the whole listing

    def _key(self, path: str) -> str:
        return Path(os.path.relpath(path, self._root)).as_posix() if self._root is not None else path

    def load(self, item: Item):
        return item.ref


class ListSource(FileSource):
    """A text file of image paths, one per line (blank lines and ``#`` comments skipped), kept in file order."""

    kind = "list"

    def _list(self) -> list[Item]:
        base = os.path.dirname(os.path.abspath(self.spec))
        paths = []
        with open(self.spec, encoding="utf-8-sig") as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    paths.append(line if os.path.isabs(line) else os.path.normpath(os.path.join(base, line)))
        return [Item(i, p, p, p) for i, p in enumerate(paths)]


# --------------------------------------------------------------------------------------------------------------------
# WebDataset tar shards
# --------------------------------------------------------------------------------------------------------------------


def _split_member(name: str) -> tuple[str, str]:
    """WebDataset's key/extension split: the key runs to the first dot of the basename (``a/b.seg.png`` -> ``a/b``,
    ``seg.png``), as ``webdataset.tariterators.base_plus_ext``."""
    folder, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(folder, stem), ext.lower()


class TarSource(Source):
    """WebDataset shards: one item per sample (``__key__``), read back by byte offset (uncompressed tars only)."""

    kind = "tar"

    def __init__(self, spec: str, tars: list[str]):
        super().__init__(spec)
        self.tars = tars

    def _list(self) -> list[Item]:
        items: list[Item] = []
        for tar in self.tars:
            for key, member, ref, others in self._samples(tar):
                path = f"{tar}/{member}" if member else f"{tar}/{key}"
                offset, size = ref or (None, 0)
                items.append(Item(len(items), key, path, (tar, offset, size, ", ".join(others) or "none")))
        return items

    @staticmethod
    def _samples(tar: str):
        """Yields ``(key, image member name | None, (offset, size) | None, other extensions)`` in tar order."""
        try:
            tf = tarfile.open(tar, mode="r:")  # plain tar: members are read back by offset, so no compression
        except tarfile.ReadError as exc:
            raise SigliteError(f"{tar}: not an uncompressed tar archive ({exc}); WebDataset shards must be plain "
                               f".tar (decompress .tar.gz shards first)") from None
        except OSError as exc:
            raise SigliteError(f"{tar}: cannot open ({exc.strerror or exc})") from None
        order: list[str] = []
        found: dict[str, list] = {}
        try:
            with tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    key, ext = _split_member(m.name)
                    if key not in found:
                        order.append(key)
                        found[key] = [None, None, []]
                    sample = found[key]
                    if sample[0] is None and ext.rpartition(".")[2] in IMAGE_EXTS:
                        sample[0], sample[1] = m.name, (m.offset_data, m.size)
                    else:
                        sample[2].append(ext)
        except (tarfile.TarError, OSError) as exc:
            raise SigliteError(f"{tar}: corrupt tar archive ({exc})") from None
        for key in order:
            member, ref, others = found[key]
            yield key, member, ref, others

    def load(self, item: Item):
        tar, offset, size, others = item.ref
        if offset is None:
            raise ImageError(item.path, f"sample has no image member (members: {others})")
        with open(tar, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        if len(data) != size:
            raise ImageError(item.path, f"tar member is truncated ({len(data)} of {size} bytes)")
        return data


# --------------------------------------------------------------------------------------------------------------------
# Parquet
# --------------------------------------------------------------------------------------------------------------------


def require_pyarrow():
    """Returns ``pyarrow.parquet``, or raises a SigliteError naming the extra to install."""
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet as pq
    except ImportError:
        raise SigliteError("reading and writing parquet needs pyarrow: pip install 'siglite[data]'") from None
    return pq


class ParquetSource(Source):
    """Rows of a parquet file, with the image either inline (bytes column) or as a path column."""

    kind = "parquet"

    def __init__(self, spec: str, column: str | None = None):
        super().__init__(spec)
        self.column, self.mode, self.struct = self._pick_column(column)
        self._local = threading.local()
        self._row_groups: list[int] = []

    def _pick_column(self, column: str | None) -> tuple[str, str, bool]:
        import pyarrow as pa

        schema = require_pyarrow().read_schema(self.spec)
        kinds = {}
        for f in schema:
            if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type):
                kinds[f.name] = ("bytes", False)
            elif pa.types.is_struct(f.type) and f.type.get_field_index("bytes") >= 0:
                kinds[f.name] = ("bytes", True)
            elif pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
                kinds[f.name] = ("path", False)
        if column is not None:
            if column not in schema.names:
                raise SigliteError(f"{self.spec}: no column {column!r} (columns: {', '.join(schema.names)})")
            if column not in kinds:
                raise SigliteError(f"{self.spec}: column {column!r} is {schema.field(column).type}, not image bytes "
                                   f"or a path string")
            return (column, *kinds[column])
        for names, mode in ((PARQUET_BYTES_COLUMNS, "bytes"), (PARQUET_PATH_COLUMNS, "path")):
            for name in names:
                if name in kinds and kinds[name][0] == mode:
                    return (name, *kinds[name])
        binary = [n for n, k in kinds.items() if k[0] == "bytes"]
        if len(binary) == 1:
            return (binary[0], *kinds[binary[0]])
        raise SigliteError(f"{self.spec}: cannot tell which column holds the images (columns: "
                           f"{', '.join(schema.names)}); pass --column")

    def _list(self) -> list[Item]:
        pq = require_pyarrow()
        pf = pq.ParquetFile(self.spec)
        self._row_groups = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
        names = pf.schema_arrow.names
        key_col = next((k for k in PARQUET_KEY_COLUMNS if k in names and k != self.column), None)
        wanted = [c for c in (key_col, self.column if self.mode == "path" else None) if c]
        table = pf.read(columns=wanted) if wanted else None
        keys = [str(k) for k in table.column(key_col).to_pylist()] if key_col else None
        if self.mode == "path":
            base = os.path.dirname(os.path.abspath(self.spec))
            items = []
            for row, p in enumerate(table.column(self.column).to_pylist()):
                p = p or ""
                path = p if (not p or os.path.isabs(p)) else os.path.normpath(os.path.join(base, p))
                items.append(Item(row, keys[row] if keys else str(row), path or f"{self.spec}#{row}", path))
            return items
        return [Item(row, keys[row] if keys else str(row), f"{self.spec}#{row}", row)
                for row in range(pf.metadata.num_rows)]

    def load(self, item: Item):
        if self.mode == "path":
            if not item.ref:
                raise ImageError(item.path, f"empty {self.column!r} value")
            return item.ref
        value = self._cell(item.ref)
        if self.struct:
            value = (value or {}).get("bytes")
        if not value:
            raise ImageError(item.path, f"no image bytes in column {self.column!r}")
        return value

    def _cell(self, row: int):
        # Rows are read one row group at a time and cached per thread: consecutive rows of a batch share it.
        local = self.__dict__.setdefault("_local", threading.local())
        if not self._row_groups:
            pf = require_pyarrow().ParquetFile(self.spec)
            self._row_groups = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
        start = 0
        for group, n in enumerate(self._row_groups):
            if row < start + n:
                break
            start += n
        cached = getattr(local, "group", None)
        if cached is None or cached[0] != group:
            if getattr(local, "file", None) is None:
                local.file = require_pyarrow().ParquetFile(self.spec)
            column = local.file.read_row_group(group, columns=[self.column]).column(0)
            local.group = cached = (group, start, column)
        return cached[2][row - cached[1]].as_py()


# --------------------------------------------------------------------------------------------------------------------
# Texts
# --------------------------------------------------------------------------------------------------------------------


class TextSource(Source):
    """Captions or labels, one per non-blank line; the key is the 1-based line number."""

    kind = "text"
    modality = "text"

    def _list(self) -> list[Item]:
        try:
            lines = Path(self.spec).read_text(encoding="utf-8-sig").splitlines()
        except UnicodeDecodeError as exc:
            raise SigliteError(f"{self.spec}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        items = []
        for number, line in enumerate(lines, 1):
            if line.strip():
                items.append(Item(len(items), str(number), f"{self.spec}:{number}", line))
        return items

    def load(self, item: Item):
        return item.ref


# --------------------------------------------------------------------------------------------------------------------
# SRC -> Source
# --------------------------------------------------------------------------------------------------------------------


def expand_braces(pattern: str) -> list[str]:
    """Expands ``{000..099}`` (zero padding kept) and ``{a,b}`` as a shell does, leftmost group first."""
    for m in _BRACE_GROUP.finditer(pattern):
        body, head, tail = m.group(1), pattern[:m.start()], pattern[m.end():]
        rng = _BRACE_RANGE.fullmatch(body)
        if rng:
            lo, hi = rng.group(1), rng.group(2)
            width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
            step = 1 if int(hi) >= int(lo) else -1
            alternatives = [str(v).zfill(width) for v in range(int(lo), int(hi) + step, step)]
        elif "," in body:
            alternatives = body.split(",")
        else:
            continue  # a literal "{x}": not a brace expression
        return [s for alt in alternatives for s in expand_braces(head + alt + tail)]
    return [pattern]


def _expand(spec: str) -> list[str]:
    out = []
    for p in expand_braces(spec):
        out += sorted(glob.glob(p, recursive=True)) if _GLOB_CHARS.search(p) else [p]
    return out


def open_source(spec: str | os.PathLike, *, text: bool = False, column: str | None = None) -> Source:
    """Picks the source kind for SRC (see the module docstring).

    Raises:
        SigliteError: If SRC matches nothing, mixes tar shards with other files, or cannot be read.
    """
    spec = os.fspath(spec)
    if text:
        if not os.path.isfile(spec):
            raise SigliteError(f"{spec}: no such text file")
        return TextSource(spec)
    if os.path.isdir(spec):
        return FileSource(spec, root=os.path.abspath(spec))
    paths = [os.path.abspath(p) for p in _expand(spec)]
    missing = [p for p in paths if not os.path.exists(p)]
    if not paths or (missing and not _GLOB_CHARS.search(spec)):
        raise SigliteError(f"{spec}: no such file, folder or matching files")
    files = [p for p in paths if os.path.isfile(p)]
    tars = [p for p in files if p.lower().endswith(".tar")]
    if tars:
        if len(tars) != len(files):
            raise SigliteError(f"{spec}: matches both .tar shards and other files; give one kind of input")
        return TarSource(spec, tars)
    if len(files) == 1 and files[0].lower().endswith((".parquet", ".pq")):
        return ParquetSource(files[0], column)
    if len(files) == 1 and not has_image_ext(files[0]) and not _GLOB_CHARS.search(spec):
        return ListSource(files[0])
    return FileSource(spec, paths=files)
