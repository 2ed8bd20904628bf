"""The one JSON file reader: a file that is missing or is not JSON becomes a one-line error naming the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import LoadError, SigliteError


def read_json(path: str | Path, *, error: type[SigliteError] = LoadError) -> Any:
    """Parse `path` as UTF-8 JSON (a leading byte-order mark is skipped).

    Args:
        path: the file.
        error: the `SigliteError` subclass raised (checkpoint and artifact files: `LoadError`; datasets:
            `SigliteError`), so callers keep the error type their callers catch.

    Raises:
        error: "<path>: missing" or "<path>: not valid JSON (<parser message>)".
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of the JSON
    except FileNotFoundError:
        raise error(f"{path}: missing") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, not a JSON file") from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: not valid JSON ({e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON ({e})") from None
