"""Export SigLIP towers as ONNX or OpenVINO graphs, with a sidecar that carries everything needed to serve them.

An exported folder holds one graph per tower (``vision.onnx``/``text.onnx``, or ``vision.xml``/``.bin`` for
OpenVINO), the source checkpoint's ``config.json``, ``preprocessor_config.json`` and tokenizer files (so
`siglite.load` and `load_tokenizer` read it like any checkpoint), and ``siglite.json``: preprocessing, tokenizer
settings, text length, logit scale and bias, dimensions, source model and precision (open_clip's
``save_config_for_hf`` and timm's ``PretrainedCfg`` are the model: an artifact carries its preprocessing).

Graphs (dynamic batch, float32 in and out):

* vision: ``pixel_values`` (N, 3, H, W) -> ``last_hidden_state`` (N, T, D), ``pooler_output`` (N, D);
* text: ``input_ids`` (N, L) int64, ``attention_mask`` (N, L) int64 -> ``pooler_output`` (N, P). The mask is
  always an input; engines feed ones when the tokenizer returns none (the same function: no key is masked).

`GraphEngine` is what the ONNX Runtime and OpenVINO engines share: sidecar, feeds and output selection.
"""

from __future__ import annotations

import hashlib
import json
import logging
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
# Files copied from the source checkpoint, so the folder loads like one (config, preprocessing, tokenizer).
ASSETS = ("config.json", "preprocessor_config.json", "tokenizer_config.json", "special_tokens_map.json",
          "added_tokens.json", "tokenizer.json", "spiece.model", "tokenizer.model")
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
        vision_layer: for a vision tower cut at a layer (`export(..., layer=K)`): the hidden_states indices (0 =
            embeddings, i = output of block i) whose tokens ``last_hidden_state`` holds (concatenated on the feature
            axis); None for the whole tower. The graph has no block after the deepest of them and no pooled output.
        post_norm: whether the final LayerNorm is applied to those layers.
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

        def forward(self, pixel_values):
            hidden, pooled = self.tower(pixel_values)
            return (hidden, pooled) if pooled is not None else (hidden,)

    class ClassifierGraph(nn.Module):
        """A fine-tuned `heads.Classifier`: (last_hidden_state, logits), one pass through the tower."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            hidden = self.model.vision.forward_intermediates(pixel_values, -1, post_norm=True)  # last_hidden_state
            return hidden, self.model.classifier(hidden.mean(dim=1))

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

    return torch, VisionGraph, TextGraph, ClassifierGraph


def export_onnx_graphs(model, out: Path, *, opset: int = OPSET) -> dict:
    """Write ``vision.onnx`` and/or ``text.onnx`` for the towers `model` (a `Siglip`) has.

    Returns:
        ``{"files": ..., "inputs": ..., "outputs": ...}`` for the sidecar.
    """
    torch, VisionGraph, TextGraph, ClassifierGraph = _graph_modules()
    _require("onnxscript", "onnx", "ONNX export")
    model = model.float().eval()
    graphs: dict = {"files": {}, "inputs": {}, "outputs": {}}
    batch = torch.export.Dim("batch", min=1)
    if model.vision is not None:
        cfg = model.vision.cfg
        pixels = torch.zeros(2, cfg.num_channels, cfg.image_size, cfg.image_size)
        if hasattr(model, "classifier"):
            module, outputs = ClassifierGraph(model), ["last_hidden_state", "logits"]
        else:
            module = VisionGraph(model.vision)
            outputs = ["last_hidden_state"] + (["pooler_output"] if model.vision.head is not None else [])
        _export(torch, module, (pixels,), INPUTS["vision"], outputs, out / "vision.onnx", opset, ({0: batch},))
        graphs["files"]["vision"], graphs["inputs"]["vision"] = "vision.onnx", INPUTS["vision"]
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
    from .loading import PREPROCESSOR, read_json
    from .preprocess.image import ImageConfig
    from .preprocess.text import load_tokenizer

    image = tokenizer = text_length = None
    dims: dict = {}
    vision_layer, post_norm = None, False
    if model.vision is not None:
        cfg = model.vision.cfg
        image = ImageConfig.from_hf(read_json(source_folder / PREPROCESSOR)).to_dict()
        dims.update(vision_hidden=cfg.hidden_size, vision_tokens=cfg.num_patches, image_size=cfg.image_size,
                    patch_size=cfg.patch_size)
        if is_cut(model.vision):
            vision_layer, post_norm = list(model.vision.taps), model.vision.post_norm
            dims.update(vision_depth=model.vision.source_depth, vision_blocks=len(model.vision.blocks),
                        vision_features=cfg.hidden_size * len(vision_layer))
    if hasattr(model, "classifier"):
        dims.update(labels=model.classifier.out_features)
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
        quantization=quantization, vision_layer=vision_layer, post_norm=post_norm,
    )


def export(model: str | Path, out: str | Path, fmt: str = "onnx", *, revision: str | None = None,
           allow_pickle: bool = False, opset: int = OPSET, layer: int | list[int] | None = None,
           post_norm: bool = False) -> Sidecar:
    """Export a checkpoint's towers to `out` as ONNX or OpenVINO, with the sidecar and the checkpoint's assets.

    Args:
        model: checkpoint folder, hub id or name from `siglite list`.
        out: output folder (created; existing graph files are replaced).
        fmt: "onnx" (served by the onnxruntime engine) or "openvino".
        revision: hub revision for hub ids.
        allow_pickle: accept a pickle checkpoint.
        opset: ONNX opset (>= 20 for the fused Gelu).
        layer: cut the vision tower at this hidden_states index (or list of them; see
            `VisionTower.forward_intermediates`): the graph holds only the blocks up to the deepest, outputs those
            tokens as ``last_hidden_state`` and has no pooled output. The sidecar records the cut.
        post_norm: apply the final LayerNorm to the cut layers.

    Returns:
        The written `Sidecar`; then ``siglite.load(out, engine=sidecar.engine)`` serves the folder.
    """
    from .heads import load_network
    from .loading import resolve

    if fmt not in FORMATS:
        raise SigliteError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    source = resolve(model, revision=revision)
    net = cut_model(load_network(source, allow_pickle=allow_pickle), layer, post_norm)
    out = prepare_folder(out, source)
    graphs = export_onnx_graphs(net, out, opset=opset)
    if fmt == "openvino":
        graphs["files"] = onnx_to_openvino(out, graphs["files"])
    sidecar = build_sidecar(net, source, graphs, fmt=fmt, precision="float32", source=str(model), opset=opset)
    sidecar.save(out)
    return sidecar


def prepare_folder(out: str | Path, source: Path) -> Path:
    """Create `out` and copy the source checkpoint's assets into it; refuses to write into the source itself."""
    out = Path(out)
    if out.resolve() == Path(source).resolve():
        raise SigliteError(f"{out}: the output folder is the source checkpoint; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    copy_assets(Path(source), out)
    return out


# -- vision towers cut at a layer (VLM feature taps) ------------------------------------------------------------------


def cut_vision_tower(tower, layers: int | list[int], post_norm: bool = False):
    """A copy of `tower` that keeps only the blocks up to the deepest of `layers` and whose forward returns
    ``(forward_intermediates(pixels, layers, post_norm), None)``: exporters, quantizers and the INT8 fidelity check
    then see a tower that simply ends at that layer (VLM users pay for 26 blocks, not 27). The copy keeps the
    tower's class and every field it has, so nothing here depends on how the tower is configured."""
    import copy

    taps = tower.layer_indices(layers)
    depth = len(tower.blocks)
    cut = copy.deepcopy(tower)
    del cut.blocks[max(taps):]
    cut.head = None
    cut.__class__ = _cut_class(type(tower))
    cut.taps, cut.post_norm, cut.source_depth = taps, bool(post_norm), depth
    return cut


def is_cut(tower) -> bool:
    """Whether `tower` was made by `cut_vision_tower`."""
    return getattr(tower, "_siglite_cut", False)


_CUT_CLASSES: dict = {}  # tower class -> its cut subclass (made once, so deep copies and isinstance agree)


def _cut_class(base):
    if base not in _CUT_CLASSES:
        def forward(self, pixels):
            return self.forward_intermediates(pixels, self.taps, self.post_norm), None

        _CUT_CLASSES[base] = type(f"Cut{base.__name__}", (base,), {"forward": forward, "_siglite_cut": True})
    return _CUT_CLASSES[base]


def cut_model(net, layer: int | list[int] | None, post_norm: bool = False):
    """`net` (a `Siglip`) with its vision tower cut at `layer` (a copy; `net` itself when layer is None)."""
    import copy

    if layer is None:
        if post_norm:
            raise SigliteError("post_norm applies to a chosen layer (--layer K)")
        return net
    if getattr(net, "vision", None) is None:
        raise SigliteError("layer= needs a vision tower; this checkpoint has none")
    if hasattr(net, "classifier"):
        raise SigliteError("layer= cuts a feature extractor; a fine-tuned classifier is exported whole")
    try:
        vision = cut_vision_tower(net.vision, layer, post_norm)
    except ValueError as e:
        raise SigliteError(str(e)) from e
    out = copy.copy(net)  # shallow: the text tower is shared, the vision tower replaced
    out._modules = dict(net._modules)
    out._modules["vision"] = vision
    return out


def normalize_layers(layer: int | list[int], depth: int) -> list[int]:
    """hidden_states indices (negative from the end) of a tower of `depth` blocks -> non-negative indices."""
    out = []
    for k in [layer] if isinstance(layer, int) else list(layer):
        if not -(depth + 1) <= int(k) <= depth:
            raise SigliteError(f"layer {k} is out of range for a vision tower of {depth} blocks")
        out.append(int(k) % (depth + 1))
    return out


# -- serving ----------------------------------------------------------------------------------------------------------


class GraphEngine:
    """The part of an engine for exported graphs that does not depend on the runtime.

    Subclasses load each tower's graph in `_load(path)` and run it in `_run(tower, feeds, outputs)`. Given a plain
    checkpoint folder instead of an export, it serves the checkpoint's cached export (see `exported_folder`).
    """

    name = "graph"
    format = "onnx"  # what a plain checkpoint is exported to on first use
    supports_layers = True  # a tower exported cut at a layer serves that layer (and refuses any other)

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

    def _load(self, path: Path):  # pragma: no cover - abstract
        raise NotImplementedError

    def _run(self, tower: str, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        raise NotImplementedError  # pragma: no cover - abstract

    def _tower(self, tower: str) -> None:
        if tower not in self.graphs:
            raise SigliteError(f"{self.folder}: this export has no {tower} tower")

    def encode_image(self, pixels: np.ndarray, tokens: bool = False, layer: int | list[int] | None = None,
                     post_norm: bool = False) -> tuple[np.ndarray | None, np.ndarray | None]:
        self._tower("vision")
        self._check_layer(layer, post_norm)
        has_pooled = "pooler_output" in self.sidecar.outputs["vision"]
        if not has_pooled and not tokens:
            raise SigliteError("this checkpoint has no pooling head (vision_use_head is false); use tokens=True")
        wanted = (["pooler_output"] if has_pooled else []) + (["last_hidden_state"] if tokens else [])
        got = dict(zip(wanted, self._run("vision", {"pixel_values": np.ascontiguousarray(pixels, np.float32)},
                                         wanted)))
        return got.get("pooler_output"), got.get("last_hidden_state")

    def _check_layer(self, layer, post_norm: bool) -> None:
        """An exported graph computes one fixed output: serve a layer only from a folder cut at exactly it."""
        sc = self.sidecar
        if sc.vision_layer is None:
            if layer is not None:
                raise SigliteError(f"{self.folder}: exported with the whole vision tower; intermediate layers need "
                                   f"an export cut at that layer (siglite export --layer {layer})")
            return
        cut = f"layer {sc.vision_layer if len(sc.vision_layer) > 1 else sc.vision_layer[0]}" + \
            (" with post_norm" if sc.post_norm else "")
        if layer is None:
            raise SigliteError(f"{self.folder}: this export is the vision tower cut at {cut}; ask for that layer "
                               "(layer=..., --layer) and tokens")
        wanted = normalize_layers(layer, int(sc.dims.get("vision_depth", 0)))
        if wanted != list(sc.vision_layer) or bool(post_norm) != bool(sc.post_norm):
            raise SigliteError(f"{self.folder}: this export is the vision tower cut at {cut}; it cannot serve "
                               f"layer {layer}{' with post_norm' if post_norm else ''} (export again with --layer)")

    def image_logits(self, pixels: np.ndarray) -> np.ndarray:
        """Classifier logits (N, C) of an exported fine-tuned classifier."""
        self._tower("vision")
        if "logits" not in self.sidecar.outputs["vision"]:
            raise SigliteError(f"{self.folder}: this export has no classification head")
        return self._run("vision", {"pixel_values": np.ascontiguousarray(pixels, np.float32)}, ["logits"])[0]

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
