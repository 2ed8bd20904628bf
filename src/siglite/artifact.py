"""The ``siglite.json`` sidecar that an exported or quantized model folder carries, and where such folders live.

An exported folder holds one graph per tower (``vision.onnx``/``text.onnx``, or ``vision.xml``/``.bin`` for
OpenVINO), the source checkpoint's ``config.json``, ``preprocessor_config.json`` and tokenizer files (so
`siglite.load` and `load_tokenizer` read it like any checkpoint), and ``siglite.json``: preprocessing, tokenizer
settings, text length, logit scale and bias, dimensions, source model and precision (open_clip's
``save_config_for_hf`` and timm's ``PretrainedCfg`` are the model: an artifact carries its preprocessing).

This module only reads and writes that description; `siglite.export` writes graphs, and `siglite.engines.graph`
serves them. Nothing here imports torch or an engine.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from .errors import LoadError
from .jsonio import read_json

SIDECAR = "siglite.json"
SIDECAR_VERSION = 1
# Export format -> the engine that serves it and the graph file suffix.
FORMATS = {"onnx": {"engine": "onnxruntime", "suffix": ".onnx"},
           "openvino": {"engine": "openvino", "suffix": ".xml"}}


@dataclass
class Sidecar:
    """Contents of ``siglite.json``.

    Attributes:
        format: "onnx" or "openvino".
        precision: "float32" or "int8".
        engine: the engine that serves the folder when none is named.
        source: the model it was exported from (name, hub id or folder).
        files: tower -> graph file in the folder.
        inputs: tower -> input names, in order.
        outputs: tower -> output names.
        image: `ImageConfig.to_dict()` of the vision preprocessing (None without a vision tower).
        tokenizer: `TextTokenizer.settings()` (None without a text tower).
        text_length: tokens per text row (the text tower's max_position_embeddings).
        logit_scale: learned log-scale t (logits use exp(t)).
        logit_bias: learned bias.
        logits: "sigmoid" (SigLIP) or "softmax" (CLIP: no bias).
        vision_layer: for a vision tower cut at a layer (`export(..., layer=K)`): the hidden_states indices (0 =
            embeddings, i = output of block i) whose tokens ``last_hidden_state`` holds (concatenated on the feature
            axis); None for the whole tower. The graph has no block after the deepest of them and no pooled output.
        post_norm: whether the final LayerNorm is applied to those layers.
        dims: hidden sizes, token count, projection size.
        producer: versions of siglite, torch and the exporter, and the opset.
        quantization: summary of the INT8 recipe (the full report sits beside it), or None.
    """

    format: str
    precision: str
    engine: str
    source: str
    files: dict
    inputs: dict
    outputs: dict
    image: dict | None
    tokenizer: dict | None
    text_length: int | None
    logit_scale: float
    logit_bias: float
    dims: dict
    producer: dict = field(default_factory=dict)
    quantization: dict | None = None
    version: int = SIDECAR_VERSION
    logits: str = "sigmoid"
    vision_layer: list[int] | None = None
    post_norm: bool = False

    def save(self, folder: Path) -> Path:
        path = Path(folder) / SIDECAR
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path


def read_sidecar(folder: str | Path) -> Sidecar:
    """Read and check ``siglite.json``; every missing or unknown field is named."""
    path = Path(folder) / SIDECAR
    if not path.is_file():
        raise LoadError(f"{path}: missing (not an exported siglite folder; see `siglite export`)")
    data = read_json(path)
    if not isinstance(data, dict):
        raise LoadError(f"{path}: expected a JSON object")
    names = {f.name for f in fields(Sidecar)}
    required = {f.name for f in fields(Sidecar) if f.default is MISSING and f.default_factory is MISSING}
    if missing := sorted(required - set(data)):
        raise LoadError(f"{path}: missing field(s) {', '.join(missing)}")
    if unknown := sorted(set(data) - names):
        raise LoadError(f"{path}: unknown field(s) {', '.join(unknown)}")
    if data.get("version", SIDECAR_VERSION) > SIDECAR_VERSION:
        raise LoadError(f"{path}: version {data['version']} is newer than this siglite reads ({SIDECAR_VERSION})")
    for tower, name in data["files"].items():
        if not (Path(folder) / name).is_file():
            raise LoadError(f"{Path(folder) / name}: missing ({tower} graph listed in {SIDECAR})")
    return Sidecar(**data)


def is_exported(folder: str | Path) -> bool:
    """Whether `folder` is an exported (or quantized) siglite folder."""
    return (Path(folder) / SIDECAR).is_file()


def engine_format(engine: str) -> str | None:
    """The export format an engine serves ("onnx" for onnxruntime, ...), or None for engines that run checkpoints."""
    return next((fmt for fmt, f in FORMATS.items() if f["engine"] == engine), None)


def cache_path(checkpoint: str | Path, fmt: str) -> Path:
    """Where the export of a plain checkpoint is cached: ``$SIGLITE_CACHE`` (default ``~/.cache/siglite``)
    ``/exports/<name>-<fingerprint>-<fmt>``; the fingerprint covers the checkpoint's path and the size and mtime of its
    config and weights, so a changed checkpoint is exported again."""
    folder = Path(checkpoint).resolve()
    h = hashlib.sha1(str(folder).encode())
    for f in sorted(folder.iterdir()):
        if f.name in ("config.json", "open_clip_config.json") or f.suffix in (".safetensors", ".bin"):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    root = Path(os.environ.get("SIGLITE_CACHE") or Path.home() / ".cache" / "siglite")
    return root / "exports" / f"{folder.name}-{h.hexdigest()[:12]}-{fmt}"
