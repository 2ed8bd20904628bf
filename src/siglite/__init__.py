"""siglite: Google's SigLIP image-text encoders, faithful to the reference and fast."""

from __future__ import annotations

import os

from .errors import ImageError, LoadError, SigliteError
from .pipeline import ImageBatch, Model
from .preprocess.image import from_bgr
from .registry import Spec, list_models

__all__ = ["load", "list_models", "Model", "ImageBatch", "Spec", "SigliteError", "LoadError", "ImageError", "from_bgr"]
__version__ = "0.1.0"


def load(name_or_path: str | os.PathLike, engine: str | None = None, device: str | None = None, dtype: str | None = None,
         *, revision: str | None = None, allow_pickle: bool = False, **engine_options) -> Model:
    """Load a SigLIP checkpoint: a hub-layout folder, a hub id (cached; honours HF_HUB_OFFLINE) or a name from
    `siglite list`.

    Args:
        name_or_path: folder with config.json, model.safetensors, tokenizer files and preprocessor_config.json,
            or a hub id such as "google/siglip-base-patch16-224".
        engine: default: the engine an exported/quantized folder names in its `siglite.json` sidecar, else "torch";
            or "torch", "cuda" (fast GPU engine: compile, CUDA graphs, fp16-safe, FP8), or an engine of
            an optional extra ("onnxruntime", "openvino").
        device: "cpu", "cuda", "cuda:1"...; default CUDA when available.
        dtype: "float32" (default), "bfloat16" or "float16" for the torch engine.
        revision: hub revision (branch, tag or commit) for hub ids.
        allow_pickle: accept a pytorch_model.bin pickle checkpoint (unpickling can run code; off by default).
        **engine_options: passed to the engine (e.g. cuda: `calib=` pixels for FP8, `compile=`, `graph_sizes=`).
    """
    from .engines.base import engine_module
    from .loading import read_checkpoint, resolve
    from .preprocess.naflex import load_image_config
    from .preprocess.text import load_tokenizer

    from .export import is_exported, read_sidecar

    folder = resolve(name_or_path, revision=revision)
    if engine is None:
        engine = read_sidecar(folder).engine if is_exported(folder) else "torch"
    ckpt = read_checkpoint(folder)
    # preprocessor_config.json (SiglipImageProcessor, or Siglip2ImageProcessor for NaFlex) or processor_config.json
    image_config = load_image_config(folder) if ckpt.vision is not None else None
    tokenizer = load_tokenizer(folder, ckpt.text.max_position_embeddings) if ckpt.text is not None else None
    runner = engine_module(engine).create(folder, device=device, dtype=dtype, allow_pickle=allow_pickle,
                                         **engine_options)
    return Model(runner, image_config, tokenizer, name=str(name_or_path), folder=folder,
                 config=ckpt.config)
