"""siglite: SigLIP and CLIP image-text encoders, faithful to the reference and fast."""

from __future__ import annotations

import os

from typing import TYPE_CHECKING

from .errors import ImageError, LoadError, SigliteError

if TYPE_CHECKING:
    from .pipeline import ImageBatch, Model
    from .preprocess.image import from_bgr
    from .registry import Spec, list_models

# Imported on first use (PEP 562), so that `import siglite.errors` or `siglite --help` does not pay for torch.
_LAZY = {"Model": "pipeline", "ImageBatch": "pipeline", "from_bgr": "preprocess.image", "Spec": "registry",
         "list_models": "registry"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'siglite' has no attribute {name!r}")


__all__ = ["load", "list_models", "Model", "ImageBatch", "Spec", "SigliteError", "LoadError", "ImageError", "from_bgr"]
__version__ = "0.1.0"


def load(name_or_path: str | os.PathLike, engine: str | None = None, device: str | None = None, dtype: str | None = None,
         *, revision: str | None = None, allow_pickle: bool = False, text_mask: bool | None = None,
         **engine_options) -> Model:
    """Load a SigLIP or CLIP checkpoint: a hub-layout folder, a hub id (cached; honours HF_HUB_OFFLINE) or a name from
    `siglite list`.

    Args:
        name_or_path: a checkpoint folder in any layout siglite reads (transformers 5.x or 4.x: config.json,
            model.safetensors, tokenizer files, processor_config.json or preprocessor_config.json; open_clip/timm:
            open_clip_config.json + open_clip_model.safetensors), or a hub id such as "google/siglip-base-patch16-224".
        engine: default: the engine an exported/quantized folder names in its `siglite.json` sidecar, else "torch";
            or "torch", "cuda" (fast GPU engine: compile, CUDA graphs, fp16-safe, FP8), or an engine of
            an optional extra ("onnxruntime", "openvino").
        device: "cpu", "cuda", "cuda:1"...; default CUDA when available.
        dtype: "float32" (default), "bfloat16" or "float16" for the torch engine.
        revision: hub revision (branch, tag or commit) for hub ids.
        allow_pickle: accept a pytorch_model.bin pickle checkpoint (unpickling can run code; off by default).
        text_mask: None (default): the family's as-trained text forward. SigLIP: no padding mask, padding attended,
            last position pooled (big_vision; open_clip; = transformers `text_model(input_ids=ids)`); CLIP: the
            tokenizer's mask with the causal mask, as transformers' CLIPTextModel (EOS pooling makes both the same).
            False: never a padding mask. True: the tokenizer's attention_mask is applied when it returns one (for
            SigLIP = transformers 5 `get_text_features(**tokenizer(texts, padding="max_length"))`).
        **engine_options: passed to the engine (e.g. cuda: `calib=` pixels for FP8, `compile=`, `graph_sizes=`).
    """
    from .artifact import engine_format, is_exported, read_sidecar
    from .checkpoints import read_checkpoint, resolve
    from .checkpoints.layout import load_text_tokenizer
    from .engines.base import check_device, engine_module
    from .pipeline import Model
    from .preprocess.naflex import load_image_config

    folder = resolve(name_or_path, revision=revision)
    exported = is_exported(folder)
    if engine is None:
        engine = read_sidecar(folder).engine if exported else "torch"
    ckpt = read_checkpoint(folder)
    from .heads import is_classifier

    # SiglipImageProcessor / CLIPImageProcessor -> ImageConfig; Siglip2ImageProcessor (NaFlex) -> NaflexConfig
    image_config = load_image_config(folder) if ckpt.vision is not None else None
    # a fine-tuned classifier (SiglipForImageClassification) keeps SiglipConfig's text_config but no text tower
    has_text = ckpt.text is not None and not is_classifier(ckpt.config)
    tokenizer = load_text_tokenizer(folder, ckpt.text.max_position_embeddings) if has_text else None
    check_device(device)
    module = engine_module(engine)
    served = folder
    if not exported and (fmt := engine_format(engine)) is not None:
        # A graph engine asked for on a plain checkpoint: export it here, once (cached), because the caller asked;
        # engines themselves never export.
        from .export import exported_folder

        served = exported_folder(folder, fmt)
    runner = module.create(served, device=device, dtype=dtype, allow_pickle=allow_pickle, **engine_options)
    if text_mask is None:  # the family's as-trained default (config.Family.text_mask)
        from .config import family_of_model_type

        fam = family_of_model_type(ckpt.config.get("model_type"))
        text_mask = fam.text_mask if fam is not None else False
    return Model(runner, image_config, tokenizer, name=str(name_or_path), folder=folder,
                 config=ckpt.config, text_mask=bool(text_mask))
