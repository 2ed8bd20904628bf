"""Which checkpoint layout a folder holds, detected from the files present, and the preprocessing files of each.

Layouts siglite reads (never guessed: a folder matching none gets one error naming what is missing):

* **transformers** — ``config.json`` (model_type siglip / siglip_vision_model / siglip_text_model) +
  ``model.safetensors`` (or shards, or ``pytorch_model.bin``). The image processor is either
  - transformers 5.x: nested in ``processor_config.json`` as ``{"image_processor": {...}}`` (written by
    ``ProcessorMixin.save_pretrained`` since transformers PR #41474; no ``preprocessor_config.json``), or
  - transformers 4.x: ``preprocessor_config.json`` (flat; also what ``SiglipImageProcessor.save_pretrained`` writes
    in 5.x when saved on its own).
  Tokenizer files are those of either version (``spiece.model`` or ``tokenizer.json`` + ``tokenizer_config.json``,
  with or without ``special_tokens_map.json``); `siglite.preprocess.text` reads both.
* **open_clip** — ``open_clip_config.json`` + ``open_clip_model.safetensors`` (or ``open_clip_pytorch_model.bin``), as
  the timm/* SigLIP repos ship; see `siglite.checkpoints.open_clip`.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import LoadError
from .base import read_json_object
from .open_clip import OPEN_CLIP_CONFIG

CONFIG = "config.json"
PREPROCESSOR = "preprocessor_config.json"  # transformers 4.x (and a lone image processor in 5.x)
PROCESSOR = "processor_config.json"  # transformers 5.x: {"image_processor": {...}, "processor_class": ...}
TRANSFORMERS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TRANSFORMERS, OPEN_CLIP = "transformers", "open_clip"


def detect(folder: str | Path) -> str:
    """The layout of a checkpoint folder: "transformers" or "open_clip".

    A folder with both config.json and transformers weights is a transformers checkpoint (that is what transformers
    itself would load); otherwise open_clip_config.json makes it an open_clip one.
    """
    folder = Path(folder)
    has_config = (folder / CONFIG).is_file()
    if has_config and any((folder / f).is_file() for f in TRANSFORMERS_WEIGHTS):
        return TRANSFORMERS
    if (folder / OPEN_CLIP_CONFIG).is_file():
        return OPEN_CLIP
    if has_config:
        return TRANSFORMERS  # the weights reader names the missing weight file
    raise LoadError(f"{folder}: not a checkpoint folder (no {CONFIG} for the transformers layout, "
                    f"no {OPEN_CLIP_CONFIG} for the open_clip layout)")


def read_image_processor(folder: str | Path) -> dict:
    """The image processor settings (a transformers ``SiglipImageProcessor`` dict) of any layout siglite loads.

    Order as transformers 5.x ``ImageProcessingMixin.get_image_processor_dict``: the ``image_processor`` nested in
    processor_config.json wins, else preprocessor_config.json.
    """
    folder = Path(folder)
    if (folder / OPEN_CLIP_CONFIG).is_file() and detect(folder) == OPEN_CLIP:
        from .open_clip import image_processor

        return image_processor(folder)
    if (folder / PROCESSOR).is_file():
        nested = read_json_object(folder / PROCESSOR).get("image_processor")
        if nested is not None:
            if not isinstance(nested, dict):
                raise LoadError(f"{folder / PROCESSOR}: 'image_processor' must be an object")
            return nested
    if (folder / PREPROCESSOR).is_file():
        return read_json_object(folder / PREPROCESSOR)
    raise LoadError(f"{folder}: no image preprocessing config ({PREPROCESSOR} missing, and no {PROCESSOR} with an "
                    "'image_processor' entry)")


def write_processor_files(folder: str | Path, image_processor: dict, *,
                          processor_class: str = "SiglipProcessor") -> None:
    """Write the image processor so transformers 4.x and 5.x both find it: flat in preprocessor_config.json (4.x, and
    5.x's fallback) and nested in processor_config.json (what 5.x's `SiglipProcessor.save_pretrained` writes)."""
    folder = Path(folder)
    flat = {"image_processor_type": "SiglipImageProcessor", **image_processor, "processor_class": processor_class}
    (folder / PREPROCESSOR).write_text(json.dumps(flat, indent=2, sort_keys=True) + "\n")
    nested = {k: v for k, v in flat.items() if k != "processor_class"}
    processor = {"image_processor": nested, "processor_class": processor_class}
    (folder / PROCESSOR).write_text(json.dumps(processor, indent=2, sort_keys=True) + "\n")


def load_text_tokenizer(folder: str | Path, max_length: int):
    """The text tokenizer of any layout: a transformers folder's files, or the one open_clip_config.json names."""
    folder = Path(folder)
    if (folder / OPEN_CLIP_CONFIG).is_file() and detect(folder) == OPEN_CLIP:
        from .open_clip import load_tokenizer as load_open_clip_tokenizer

        return load_open_clip_tokenizer(folder, max_length)
    from ..preprocess.text import load_tokenizer

    return load_tokenizer(folder, max_length)
