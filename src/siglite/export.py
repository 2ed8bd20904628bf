"""Export SigLIP towers as ONNX or OpenVINO graphs, with a sidecar that carries everything needed to serve them.

An exported folder holds one graph per tower (``vision.onnx``/``text.onnx``, or ``vision.xml``/``.bin`` for
OpenVINO), the source checkpoint's ``config.json``, ``preprocessor_config.json`` and tokenizer files (so
`siglite.load` and `load_tokenizer` read it like any checkpoint), and ``siglite.json``: preprocessing, tokenizer
settings, text length, logit scale and bias, dimensions, source model and precision (open_clip's
``save_config_for_hf`` and timm's ``PretrainedCfg`` are the model: an artifact carries its preprocessing).

Graphs (dynamic batch, float32 in and out):

* vision: ``pixel_values`` (N, 3, H, W) -> ``last_hidden_state`` (N, T, D), ``pooler_output`` (N, D);
* vision, NaFlex (variable-resolution) models: ``pixel_values`` (N, P, p*p*3) patches at the fixed patch budget P
  chosen at export, ``spatial_shapes`` (N, 2) int64 -> the same outputs (P tokens; those past rows*cols are padding);
* text: ``input_ids`` (N, L) int64, ``attention_mask`` (N, L) int64 -> ``pooler_output`` (N, P). The mask is
  always an input; engines feed ones when the tokenizer returns none (the same function: no key is masked).

`GraphEngine` is what the ONNX Runtime and OpenVINO engines share: sidecar, feeds and output selection.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from .errors import LoadError, SigliteError

SIDECAR = "siglite.json"
SIDECAR_VERSION = 1
# Opset 20 is the first with a `Gelu` op: one fused kernel where opset 18 spells tanh-GELU as 8 elementwise ops
# (about a tenth of the INT8 vision tower's time on CPU, measured with ONNX Runtime 1.31).
OPSET = 20
FORMATS = {"onnx": {"engine": "onnxruntime", "suffix": ".onnx"},
           "openvino": {"engine": "openvino", "suffix": ".xml"}}
TOWERS = ("vision", "text")
INPUTS = {"vision": ["pixel_values"], "text": ["input_ids", "attention_mask"]}
NAFLEX_VISION_INPUTS = ["pixel_values", "spatial_shapes"]
# Files copied from the source checkpoint, so the folder loads like one (config, preprocessing, tokenizer).
ASSETS = ("config.json", "preprocessor_config.json", "tokenizer_config.json", "special_tokens_map.json",
          "added_tokens.json", "tokenizer.json", "spiece.model", "tokenizer.model",
          "processor_config.json")  # transformers 5's Siglip2Processor.save_pretrained (NaFlex image processor)
EXTERNAL_DATA_BYTES = 1_500_000_000
log = logging.getLogger(__name__)  # protobuf stops at 2 GiB: larger graphs keep weights in a .data file


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

    def save(self, folder: Path) -> Path:
        path = Path(folder) / SIDECAR
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path


def read_sidecar(folder: str | Path) -> Sidecar:
    """Read and check ``siglite.json``; every missing or unknown field is named."""
    path = Path(folder) / SIDECAR
    if not path.is_file():
        raise LoadError(f"{path}: missing (not an exported siglite folder; see `siglite export`)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LoadError(f"{path}: not valid JSON ({e})") from e
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


def cache_path(checkpoint: str | Path, fmt: str) -> Path:
    """Where `exported_folder` keeps the export of a plain checkpoint: ``$SIGLITE_CACHE`` (default
    ``~/.cache/siglite``) ``/exports/<name>-<fingerprint>-<fmt>``; the fingerprint covers the checkpoint's path and
    the size and mtime of its config and weights, so a changed checkpoint is exported again."""
    folder = Path(checkpoint).resolve()
    h = hashlib.sha1(str(folder).encode())
    for f in sorted(folder.iterdir()):
        if f.name == "config.json" or f.suffix in (".safetensors", ".bin"):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    root = Path(os.environ.get("SIGLITE_CACHE") or Path.home() / ".cache" / "siglite")
    return root / "exports" / f"{folder.name}-{h.hexdigest()[:12]}-{fmt}"


def exported_folder(folder: str | Path, fmt: str) -> Path:
    """`folder` itself when it is an export; for a plain checkpoint, its export in the cache (made on first use), so
    that ``siglite.load(checkpoint, engine="onnxruntime")`` works without a separate `siglite export` step."""
    folder = Path(folder)
    if is_exported(folder):
        return folder
    if not (folder / "config.json").is_file():
        read_sidecar(folder)  # raises: neither an export nor a checkpoint
    out = cache_path(folder, fmt)
    if not is_exported(out):
        log.info("exporting %s to %s (once; cached)", folder, out)
        export(folder, out, fmt)
    return out


# -- graphs -----------------------------------------------------------------------------------------------------------


def _graph_modules():
    """The two export wrappers, built lazily so that importing this module needs no torch."""
    import torch
    from torch import nn

    class VisionGraph(nn.Module):
        """The vision tower with its outputs named for export: (last_hidden_state, pooler_output)."""

        def __init__(self, tower):
            super().__init__()
            self.tower = tower

        def forward(self, pixel_values, spatial_shapes=None):  # spatial_shapes: NaFlex towers only
            hidden, pooled = self.tower(pixel_values, spatial_shapes)
            return (hidden, pooled) if pooled is not None else (hidden,)

    class TextGraph(nn.Module):
        """`TextTower.forward` with the padding mask always applied. The tower skips an all-ones mask with a
        data-dependent branch that cannot be traced; applying it is the same function (no key is masked)."""

        def __init__(self, tower):
            super().__init__()
            self.tower = tower

        def forward(self, input_ids, attention_mask):
            t = self.tower
            x = t.tok_embed(input_ids) + t.pos_embed[:, :input_ids.shape[1]]  # (B, L, D)
            mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, L), True = attend
            for block in t.blocks:
                x = block(x, mask)
            x = t.norm(x)
            return (t.head(x[:, -1]),)  # sticky EOS pooling, as TextTower

    return torch, VisionGraph, TextGraph


def export_onnx_graphs(model, out: Path, *, opset: int = OPSET, num_patches: int | None = None) -> dict:
    """Write ``vision.onnx`` and/or ``text.onnx`` for the towers `model` (a `Siglip`) has.

    num_patches: the fixed patch budget of a NaFlex vision graph (required for those, ignored otherwise).

    Returns:
        ``{"files": ..., "inputs": ..., "outputs": ...}`` for the sidecar.
    """
    torch, VisionGraph, TextGraph = _graph_modules()
    _require("onnxscript", "onnx", "ONNX export")
    model = model.float().eval()
    graphs: dict = {"files": {}, "inputs": {}, "outputs": {}}
    batch = torch.export.Dim("batch", min=1)
    if model.vision is not None:
        cfg = model.vision.cfg
        pixels = torch.zeros(2, cfg.num_channels, cfg.image_size, cfg.image_size)
        outputs = ["last_hidden_state"] + (["pooler_output"] if model.vision.head is not None else [])
        args, names, dynamic = (pixels,), INPUTS["vision"], ({0: batch},)
        if cfg.variable_resolution:  # NaFlex: patches at one fixed budget, each image's grid as an input
            if not num_patches:
                raise SigliteError("exporting a NaFlex vision tower needs a fixed patch budget (num_patches)")
            patches = torch.zeros(2, num_patches, cfg.num_channels * cfg.patch_size**2)
            side = math.isqrt(num_patches)
            shapes = torch.tensor([[side, num_patches // side], [1, 1]], dtype=torch.int64)
            args, names, dynamic = (patches, shapes), NAFLEX_VISION_INPUTS, ({0: batch}, {0: batch})
        _export(torch, VisionGraph(model.vision), args, names, outputs, out / "vision.onnx", opset, dynamic)
        graphs["files"]["vision"], graphs["inputs"]["vision"] = "vision.onnx", names
        graphs["outputs"]["vision"] = outputs
    if model.text is not None:
        L = model.text.cfg.max_position_embeddings
        ids, mask = torch.zeros(2, L, dtype=torch.int64), torch.ones(2, L, dtype=torch.int64)
        _export(torch, TextGraph(model.text), (ids, mask), INPUTS["text"], ["pooler_output"], out / "text.onnx",
                opset, ({0: batch}, {0: batch}))
        graphs["files"]["text"], graphs["inputs"]["text"] = "text.onnx", INPUTS["text"]
        graphs["outputs"]["text"] = ["pooler_output"]
    return graphs


def _export(torch, module, args, input_names, output_names, path: Path, opset: int, dynamic_shapes) -> None:
    import contextlib
    import io
    import logging
    import warnings

    size = sum(p.numel() * p.element_size() for p in module.parameters())
    # the exporter narrates every pass on stdout and in logs (and warns about torchvision ops); keep only errors
    quiet = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(module.eval(), args, input_names=input_names, output_names=output_names,
                                        dynamic_shapes=dynamic_shapes, dynamo=True, opset_version=opset,
                                        verbose=False)
        except Exception as e:  # the exporter's errors are pages long; keep the first line
            raise SigliteError(f"{path.name}: ONNX export failed ({type(e).__name__}: {_first_line(e)})") from e
        finally:
            for lg, level in zip(quiet, levels):
                lg.setLevel(level)
    program.save(str(path), external_data=size > EXTERNAL_DATA_BYTES)


def onnx_to_openvino(out: Path, files: dict) -> dict:
    """Convert each ``<tower>.onnx`` in `out` to OpenVINO IR (``.xml`` + ``.bin``, float32 weights) and remove the
    ONNX files. Returns the new tower -> file map."""
    ov = _require("openvino", "openvino", "OpenVINO export")
    converted = {}
    for tower, name in files.items():
        src = out / name
        dst = src.with_suffix(".xml")
        # save_model would compress weights to float16 by default: keep float32 for parity with the torch path
        ov.save_model(ov.convert_model(str(src)), str(dst), compress_to_fp16=False)
        for f in (src, src.with_name(src.name + ".data")):
            f.unlink(missing_ok=True)
        converted[tower] = dst.name
    return converted


# -- the folder -------------------------------------------------------------------------------------------------------


def copy_assets(source: Path, out: Path) -> list[str]:
    """Copy config, preprocessing and tokenizer files from the source checkpoint folder into `out`."""
    copied = []
    for name in ASSETS:
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
            copied.append(name)
    return copied


def build_sidecar(model, source_folder: Path, graphs: dict, *, fmt: str, precision: str, source: str,
                  quantization: dict | None = None, opset: int = OPSET) -> Sidecar:
    """The sidecar of an export of `model` (a `Siglip`) read from `source_folder`."""
    import torch

    from . import __version__
    from .preprocess.naflex import load_image_config
    from .preprocess.text import load_tokenizer

    image = tokenizer = text_length = None
    dims: dict = {}
    if model.vision is not None:
        cfg = model.vision.cfg
        image = load_image_config(source_folder).to_dict()
        dims.update(vision_hidden=cfg.hidden_size, vision_tokens=cfg.num_patches, image_size=cfg.image_size,
                    patch_size=cfg.patch_size)
        if cfg.variable_resolution:  # NaFlex: the vision graph's fixed patch budget
            dims["vision_tokens"] = dims["num_patches"] = graphs.get("num_patches")
    if model.text is not None:
        cfg = model.text.cfg
        text_length = cfg.max_position_embeddings
        tokenizer = load_tokenizer(source_folder, text_length).settings()
        dims.update(text_hidden=cfg.hidden_size, projection=model.text.head.out_features)
    return Sidecar(
        format=fmt, precision=precision, engine=FORMATS[fmt]["engine"], source=source,
        files=graphs["files"], inputs=graphs["inputs"], outputs=graphs["outputs"], image=image, tokenizer=tokenizer,
        text_length=text_length, logit_scale=float(model.logit_scale.item()),
        logit_bias=float(model.logit_bias.item()), dims=dims,
        producer={"siglite": __version__, "torch": torch.__version__, "exporter": "torch.onnx.export(dynamo=True)",
                  "opset": opset},
        quantization=quantization,
    )


def export(model: str | Path, out: str | Path, fmt: str = "onnx", *, revision: str | None = None,
           allow_pickle: bool = False, opset: int = OPSET, max_num_patches: int | None = None) -> Sidecar:
    """Export a checkpoint's towers to `out` as ONNX or OpenVINO, with the sidecar and the checkpoint's assets.

    Args:
        model: checkpoint folder, hub id or name from `siglite list`.
        out: output folder (created; existing graph files are replaced).
        fmt: "onnx" (served by the onnxruntime engine) or "openvino".
        revision: hub revision for hub ids.
        allow_pickle: accept a pickle checkpoint.
        opset: ONNX opset (>= 20 for the fused Gelu).
        max_num_patches: NaFlex models: the fixed patch budget of the vision graph (default: the checkpoint's
            image processor's, 256 for the hub checkpoints).

    Returns:
        The written `Sidecar`; then ``siglite.load(out, engine=sidecar.engine)`` serves the folder.
    """
    from .loading import load_model, resolve

    if fmt not in FORMATS:
        raise SigliteError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    source = resolve(model, revision=revision)
    _, net = load_model(source, allow_pickle=allow_pickle)
    num_patches = naflex_patch_budget(net, source, max_num_patches)
    out = prepare_folder(out, source)
    graphs = export_onnx_graphs(net, out, opset=opset, num_patches=num_patches)
    graphs["num_patches"] = num_patches
    if fmt == "openvino":
        graphs["files"] = onnx_to_openvino(out, graphs["files"])
    sidecar = build_sidecar(net, source, graphs, fmt=fmt, precision="float32", source=str(model), opset=opset)
    sidecar.save(out)
    return sidecar


def naflex_patch_budget(model, source: Path, max_num_patches: int | None) -> int | None:
    """The fixed patch budget to export a NaFlex vision tower at (None for fixed-resolution models)."""
    if model.vision is None or not model.vision.cfg.variable_resolution:
        if max_num_patches is not None:
            raise SigliteError("max_num_patches applies to NaFlex (siglip2) models only")
        return None
    from .preprocess.naflex import load_image_config

    budget = max_num_patches if max_num_patches is not None else load_image_config(source).max_num_patches
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise SigliteError(f"max_num_patches must be a positive int, got {budget!r}")
    return budget


def prepare_folder(out: str | Path, source: Path) -> Path:
    """Create `out` and copy the source checkpoint's assets into it; refuses to write into the source itself."""
    out = Path(out)
    if out.resolve() == Path(source).resolve():
        raise SigliteError(f"{out}: the output folder is the source checkpoint; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    copy_assets(Path(source), out)
    return out


# -- serving ----------------------------------------------------------------------------------------------------------


class GraphEngine:
    """The part of an engine for exported graphs that does not depend on the runtime.

    Subclasses load each tower's graph in `_load(path)` and run it in `_run(tower, feeds, outputs)`. Given a plain
    checkpoint folder instead of an export, it serves the checkpoint's cached export (see `exported_folder`).
    """

    name = "graph"
    format = "onnx"  # what a plain checkpoint is exported to on first use

    def __init__(self, folder: str | Path, *, dtype: str | None = None):
        self.folder = exported_folder(folder, self.format)
        self.sidecar = read_sidecar(self.folder)
        if dtype is not None and _canonical_precision(dtype) != self.sidecar.precision:
            raise SigliteError(f"{self.folder}: exported in {self.sidecar.precision}; its precision is fixed at "
                               f"export time (asked for {dtype})")
        self.precision = self.sidecar.precision
        self.logit_scale = self.sidecar.logit_scale
        self.logit_bias = self.sidecar.logit_bias
        self.graphs = {tower: self._load(self.folder / name) for tower, name in self.sidecar.files.items()}
        # NaFlex: the vision graph's fixed patch budget; the pipeline pads every batch to it
        self.num_patches = self.sidecar.dims.get("num_patches")

    def _load(self, path: Path):  # pragma: no cover - abstract
        raise NotImplementedError

    def _run(self, tower: str, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        raise NotImplementedError  # pragma: no cover - abstract

    def _tower(self, tower: str) -> None:
        if tower not in self.graphs:
            raise SigliteError(f"{self.folder}: this export has no {tower} tower")

    def encode_image(self, pixels: np.ndarray, tokens: bool = False, spatial_shapes: np.ndarray | None = None
                     ) -> tuple[np.ndarray | None, np.ndarray | None]:
        self._tower("vision")
        has_pooled = "pooler_output" in self.sidecar.outputs["vision"]
        if not has_pooled and not tokens:
            raise SigliteError("this checkpoint has no pooling head (vision_use_head is false); use tokens=True")
        wanted = (["pooler_output"] if has_pooled else []) + (["last_hidden_state"] if tokens else [])
        feeds = {"pixel_values": np.ascontiguousarray(pixels, np.float32)}
        if spatial_shapes is not None:  # NaFlex graphs
            feeds["spatial_shapes"] = np.ascontiguousarray(spatial_shapes, np.int64)
        got = dict(zip(wanted, self._run("vision", feeds, wanted)))
        return got.get("pooler_output"), got.get("last_hidden_state")

    def encode_text(self, ids: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        self._tower("text")
        ids = np.ascontiguousarray(ids, np.int64)
        mask = np.ones_like(ids) if mask is None else np.ascontiguousarray(mask, np.int64)
        return self._run("text", {"input_ids": ids, "attention_mask": mask}, ["pooler_output"])[0]


def _canonical_precision(dtype: str) -> str:
    return {"fp32": "float32", "float32": "float32", "int8": "int8"}.get(str(dtype), str(dtype))


def _require(module: str, extra: str, what: str):
    """Import an optional dependency or raise a one-line error naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise SigliteError(f"{what} needs {module} ({e}); pip install 'siglite[{extra}]'") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__
