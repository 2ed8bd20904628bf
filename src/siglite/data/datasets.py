"""Small readers for evaluation data, returning plain lists.

Classification: an ImageNet-style folder (one sub-folder per class) or the CIFAR-100 python-pickle format (as in
``shared/seeds/002_54a2fa41193a2260.txt``). Retrieval: a JSONL of ``{"image": path, "captions": [...]}`` or a COCO
captions JSON. Every malformed input raises a one-line `SigliteError` naming the file and the field.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SigliteError
from ..jsonio import read_json
from .sources import has_image_ext

CIFAR_TEST, CIFAR_META = "test", "meta"
CIFAR_SIDE = 32


@dataclass
class LabelledImages:
    """A classification set: ``images[i]`` (a path or an HWC uint8 array) has class ``labels[i]``."""

    images: list
    labels: list[int]
    classnames: list[str]
    source: str = ""

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, limit: int | None) -> LabelledImages:
        """At most `limit` items spread evenly over the set (folders are sorted by class, so not the first N)."""
        if not limit or limit >= len(self.images):
            return self
        idx = np.linspace(0, len(self.images) - 1, limit).round().astype(int)
        return LabelledImages([self.images[i] for i in idx], [self.labels[i] for i in idx], self.classnames,
                              self.source)


# -- class names and templates ----------------------------------------------------------------------------------------


def read_classnames(path: str | Path) -> list[str] | dict[str, str]:
    """Class names from a file: one per line (blank lines skipped), a JSON list, or a JSON dict.

    A dict maps a folder name (e.g. an ImageNet wnid) or a class index to the name; a dict with one list value
    (CLIP_benchmark's ``{"cifar100": [...]}`` layout) is read as that list.
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        data = read_json(path, error=SigliteError)
        if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
            data = next(iter(data.values()))
        if isinstance(data, list) and all(isinstance(c, str) for c in data):
            return list(data)
        if isinstance(data, dict) and all(isinstance(v, str) for v in data.values()):
            return {str(k): v for k, v in data.items()}
        raise SigliteError(f"{path}: expected a JSON list of class names or a dict of name -> class name")
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    except FileNotFoundError:
        raise SigliteError(f"{path}: no such file") from None
    names = [n for n in names if n]
    if not names:
        raise SigliteError(f"{path}: no class names in file")
    return names


def read_templates(path: str | Path, key: str | None = None) -> list[str]:
    """Prompt templates from a JSON list (CLIP_benchmark style, ``"a photo of a {c}."``), or from a dict of
    dataset -> list picked by `key` (the only entry when `key` is None)."""
    path = Path(path)
    data = read_json(path, error=SigliteError)
    if isinstance(data, dict):
        if key is None and len(data) == 1:
            key = next(iter(data))
        if key not in data:
            raise SigliteError(f"{path}: pick a template list with a key, one of {', '.join(sorted(data))}")
        data = data[key]
    if not isinstance(data, list) or not data or not all(isinstance(t, str) for t in data):
        raise SigliteError(f"{path}: expected a non-empty JSON list of template strings")
    for t in data:
        if "{}" not in t and "{c}" not in t:
            raise SigliteError(f"{path}: template {t!r} has no '{{c}}' or '{{}}' placeholder for the class name")
    return data


def _apply_classnames(found: list[str], names: list[str] | dict[str, str] | None, source: str) -> list[str]:
    """Folder (or index) order is the label order; `names` renames them."""
    if names is None:
        return found
    if isinstance(names, dict):
        missing = [f for i, f in enumerate(found) if f not in names and str(i) not in names]
        if missing:
            raise SigliteError(f"{source}: class names file has no entry for {missing[0]!r} ({len(missing)} missing)")
        return [names[f] if f in names else names[str(i)] for i, f in enumerate(found)]
    if len(names) != len(found):
        raise SigliteError(f"{source}: {len(names)} class names for {len(found)} classes")
    return list(names)


# -- classification sets ----------------------------------------------------------------------------------------------


def list_images(folder: str | Path) -> list[Path]:
    """Image files under `folder` (recursive, sorted, hidden files skipped), chosen by extension."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SigliteError(f"{folder}: not a folder")
    return sorted(p for p in folder.rglob("*") if p.is_file() and has_image_ext(p.name)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def read_image_folder(root: str | Path, classnames: list[str] | dict[str, str] | None = None) -> LabelledImages:
    """ImageNet-style folder: ``root/<class>/<image>``; classes are the sub-folders in sorted order.

    Args:
        root: The folder.
        classnames: Names to use instead of the folder names: a list in sorted-folder order, or a dict keyed by
            folder name (or class index), e.g. from `read_classnames`.
    """
    root = Path(root)
    if not root.is_dir():
        raise SigliteError(f"{root}: not a folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise SigliteError(f"{root}: no class sub-folders (expected root/<class>/<image>)")
    images, labels = [], []
    for label, folder in enumerate(folders):
        files = list_images(folder)
        images += files
        labels += [label] * len(files)
    if not images:
        raise SigliteError(f"{root}: no image files in the class sub-folders")
    found = [f.name for f in folders]
    return LabelledImages(images, labels, _apply_classnames(found, classnames, str(root)), str(root))


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists and numpy arrays only: a CIFAR file needs nothing else, and refusing every other global
    keeps a crafted file from running code."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _load_cifar_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            data = _ArrayUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise SigliteError(f"{path}: no such file") from None
    except Exception as e:  # truncated or foreign pickles raise many types
        raise SigliteError(f"{path}: not a CIFAR python pickle ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise SigliteError(f"{path}: not a CIFAR python pickle (expected a dict, got {type(data).__name__})")
    return data


def _field(data: dict, key: str, path: Path):
    for k in (key.encode(), key):
        if k in data:
            return data[k]
    raise SigliteError(f"{path}: missing field {key!r}")


def is_cifar_folder(root: str | Path) -> bool:
    root = Path(root)
    return (root / CIFAR_TEST).is_file() and (root / CIFAR_META).is_file()


def read_cifar100(root: str | Path, split: str = CIFAR_TEST,
                  classnames: list[str] | dict[str, str] | None = None) -> LabelledImages:
    """CIFAR-100 python format (``cifar-100-python/``): `split` holds b'data' (N, 3072) uint8, rows of R, G, B planes
    of 32x32, and b'fine_labels'; ``meta`` holds b'fine_label_names'. Images come back as (32, 32, 3) uint8 RGB
    arrays; underscores in the class names become spaces ("maple_tree" -> "maple tree")."""
    root = Path(root)
    if (root / "cifar-100-python").is_dir():
        root = root / "cifar-100-python"
    path = root / split
    data = _load_cifar_pickle(path)
    pixels = np.asarray(_field(data, "data", path))
    labels = [int(v) for v in _field(data, "fine_labels", path)]
    if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != 3 * CIFAR_SIDE * CIFAR_SIDE:
        raise SigliteError(f"{path}: field 'data' must be (N, 3072) uint8, got {pixels.shape} {pixels.dtype}")
    if len(labels) != len(pixels):
        raise SigliteError(f"{path}: field 'fine_labels' has {len(labels)} entries for {len(pixels)} images")
    meta = _load_cifar_pickle(root / CIFAR_META)
    names = _field(meta, "fine_label_names", root / CIFAR_META)
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    if labels and not 0 <= min(labels) <= max(labels) < len(names):
        raise SigliteError(f"{path}: field 'fine_labels' has labels outside 0..{len(names) - 1}")
    images = list(pixels.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE).transpose(0, 2, 3, 1))  # (N, 32, 32, 3) views
    found = [n.replace("_", " ") for n in names]
    return LabelledImages(images, labels, _apply_classnames(found, classnames, str(path)), str(path))


CLASSNAMES_FILE = "classnames.txt"  # read from a dataset folder when no --classnames is given


def read_classification(path: str | Path, classnames: str | Path | None = None) -> LabelledImages:
    """A CIFAR-100 folder (with ``test`` and ``meta``, or a ``cifar-100-python`` inside) or an ImageNet-style one.

    Without `classnames`, a ``classnames.txt`` beside the class folders (as ``siglite synth`` writes) names the
    classes; folder names like ``n01440764`` would otherwise become the prompts and zero-shot scores collapse."""
    path = Path(path)
    if classnames is None and (path / CLASSNAMES_FILE).is_file():
        classnames = path / CLASSNAMES_FILE
    names = read_classnames(classnames) if classnames else None
    if is_cifar_folder(path) or is_cifar_folder(path / "cifar-100-python"):
        return read_cifar100(path, classnames=names)
    return read_image_folder(path, classnames=names)


# -- retrieval sets ---------------------------------------------------------------------------------------------------


def read_captions_jsonl(path: str | Path, images_root: str | Path | None = None) -> list[dict]:
    """One JSON object per line: ``{"image": path, "captions": [str, ...]}`` (or ``"caption": str``).

    Relative image paths are taken from `images_root` (default: the JSONL's folder).
    Returns ``[{"image": Path, "captions": [...]}, ...]``.
    """
    path = Path(path)
    root = Path(images_root) if images_root else path.parent
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise SigliteError(f"{path}: no such file") from None
    items = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SigliteError(f"{path}:{n}: not valid JSON ({e})") from None
        if not isinstance(row, dict) or not isinstance(row.get("image"), str):
            raise SigliteError(f"{path}:{n}: field 'image' (a path) is missing")
        captions = row.get("captions", [row["caption"]] if isinstance(row.get("caption"), str) else None)
        if not isinstance(captions, list) or not captions or not all(isinstance(c, str) for c in captions):
            raise SigliteError(f"{path}:{n}: field 'captions' must be a non-empty list of strings")
        items.append({"image": root / row["image"], "captions": captions})
    if not items:
        raise SigliteError(f"{path}: no items")
    return items


def read_coco_captions(path: str | Path, images_root: str | Path | None = None) -> list[dict]:
    """COCO captions JSON: ``images[{id, file_name}]`` and ``annotations[{image_id, caption}]``; images are under
    `images_root` (default: the JSON's folder). Images without a caption are left out. Same output as
    `read_captions_jsonl`, in the order of ``images``."""
    path = Path(path)
    root = Path(images_root) if images_root else path.parent
    data = read_json(path, error=SigliteError)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise SigliteError(f"{path}: field 'images' (a list) is missing; not a COCO captions file")
    if not isinstance(data.get("annotations"), list):
        raise SigliteError(f"{path}: field 'annotations' (a list) is missing; not a COCO captions file")
    captions: dict = {}
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or not isinstance(ann.get("caption"), str):
            raise SigliteError(f"{path}: annotations[{i}] needs 'image_id' and 'caption'")
        captions.setdefault(ann["image_id"], []).append(ann["caption"].strip())
    items = []
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
            raise SigliteError(f"{path}: images[{i}] needs 'id' and 'file_name'")
        if img["id"] in captions:
            items.append({"image": root / img["file_name"], "captions": captions[img["id"]]})
    if not items:
        raise SigliteError(f"{path}: no image has a caption")
    return items


def read_retrieval(path: str | Path, images_root: str | Path | None = None) -> list[dict]:
    """A ``.jsonl`` of {image, captions}, or a COCO captions ``.json``."""
    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        return read_captions_jsonl(path, images_root)
    if path.suffix.lower() == ".json":
        return read_coco_captions(path, images_root)
    raise SigliteError(f"{path}: expected a .jsonl of {{image, captions}} or a COCO captions .json")
