"""Writing results safely: output paths checked before the work, files written atomically, finished work kept.

Every command that writes a model, dataset or result follows the same three rules:

* the path is checked before any work starts (`check_output_file` / `check_output_dir`): its parent folder exists, a
  folder is not given where a file is written (or the reverse), and an existing result is refused unless
  ``overwrite=True`` (the CLI's ``--overwrite``);
* a file is written under a temporary name in the same folder and renamed over the target (`atomic_write`), so a reader
  or a killed run sees the old file or the whole new one, never half of one;
* a folder (a dataset, an export) is built under a temporary sibling and swapped in at the end (`staged_dir`), so an
  interrupted run leaves the old folder as it was.

``--overwrite`` only ever deletes a folder that holds what the command itself writes (a marker file such as
``config.json`` or ``classnames.txt``), so ``--out ~ --overwrite`` cannot wipe a home folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

from .errors import SigliteError


def _is_temp(path: Path) -> bool:
    return path.name.startswith(".") and ".tmp-" in path.name


def check_output_file(path: str | os.PathLike, *, overwrite: bool = False, flag: str = "--out") -> Path:
    """Checks that a file can be written at `path` before the work that produces it.

    Raises:
        SigliteError: The parent folder is missing or not a folder, `path` is a folder, or `path` exists and
            `overwrite` is false.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise SigliteError(f"{flag} {path}: folder {parent} does not exist")
    if not parent.is_dir():
        raise SigliteError(f"{flag} {path}: {parent} is not a folder")
    if path.is_dir():
        raise SigliteError(f"{flag} {path}: is a folder; give a file name")
    if path.exists() and not overwrite:
        raise SigliteError(f"{flag} {path}: exists; pass --overwrite to replace it")
    if not os.access(parent, os.W_OK):
        raise SigliteError(f"{flag} {path}: folder {parent} is not writable")
    return path


def check_output_dir(path: str | os.PathLike, *, overwrite: bool = False, markers: tuple[str, ...] = (),
                     flag: str = "--out", what: str = "output") -> Path:
    """Checks that a folder can be (re)written at `path` before the work that produces it.

    Args:
        path: The output folder.
        overwrite: Allow replacing an existing, non-empty folder, if it holds one of `markers`.
        markers: File names one of which an existing folder must hold to be replaced (what this command writes).
        flag: The option name, for messages.
        what: What the folder holds ("model", "dataset", ...), for messages.

    Raises:
        SigliteError: The parent is missing, `path` is a file, or `path` is a non-empty folder and `overwrite` is
            false or the folder does not look like a `what`.
    """
    path = Path(path)
    parent = path.absolute().parent
    if path.exists() and not path.is_dir():
        raise SigliteError(f"{flag} {path}: is a file; give a folder")
    if not parent.is_dir():
        raise SigliteError(f"{flag} {path}: folder {parent} does not exist")
    if path.is_dir() and any(not _is_temp(p) for p in path.iterdir()):
        if not overwrite:
            raise SigliteError(f"{flag} {path}: exists and is not empty; pass --overwrite to replace the {what}")
        if markers and not any((path / m).exists() for m in markers):
            raise SigliteError(f"{flag} {path}: is not a {what} folder (no {' or '.join(markers)}); refusing to "
                               f"replace it even with --overwrite")
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Calls ``write(tmp)`` then renames `tmp` over `path`, after an fsync."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_npy(path: str | os.PathLike, array) -> Path:
    import numpy as np

    def write(tmp: Path):
        with open(tmp, "wb") as f:  # a file object: np.save(str) would append ".npy" to the temporary name
            np.save(f, array)

    return atomic_write(path, write)


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yields a fresh temporary sibling of `out` to build a folder in; on success swaps it in for `out` (an old `out`
    is removed only then), on any error or interrupt removes it and leaves `out` as it was."""
    out = Path(out).absolute()
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def read_lines(path: str | os.PathLike) -> list[str]:
    """The non-blank lines of a UTF-8 text file, stripped; a leading byte-order mark (Windows editors) is dropped."""
    path = Path(path)
    if path.is_dir():
        raise SigliteError(f"{path}: is a folder; give a text file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise SigliteError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]
