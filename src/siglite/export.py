"""Export SigLIP towers as ONNX or OpenVINO graphs, into a folder that `siglite.load` serves.

An exported folder holds one graph per tower, the source checkpoint's config, preprocessing and tokenizer files, and
the ``siglite.json`` sidecar (`siglite.artifact`). The graphs' inputs and outputs are described in
`siglite.engines.graph`, which serves them. Nothing here runs unless asked: `export` (``siglite export``),
`siglite.tasks.quantize`, or `siglite.load` given a graph engine for a plain checkpoint (`exported_folder`).
NaFlex (variable-resolution) vision graphs take ``pixel_values`` (N, P, p*p*3) patches at the fixed patch
budget P chosen at export and ``spatial_shapes`` (N, 2) int64 (P tokens out; those past rows*cols are padding).
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

from .artifact import FORMATS, Sidecar, cache_path, is_exported, read_sidecar
from .engines.graph import INPUTS
from .errors import SigliteError

# Opset 20 is the first with a `Gelu` op: one fused kernel where opset 18 spells tanh-GELU as 8 elementwise ops
# (about a tenth of the INT8 vision tower's time on CPU, measured with ONNX Runtime 1.31).
OPSET = 20
NAFLEX_VISION_INPUTS = ["pixel_values", "spatial_shapes"]
# Files copied from the source checkpoint, so the folder loads like one (config, preprocessing, tokenizer).
ASSETS = ("config.json", "preprocessor_config.json", "processor_config.json", "tokenizer_config.json",
          "special_tokens_map.json", "added_tokens.json", "tokenizer.json", "spiece.model", "tokenizer.model",
          "vocab.json", "merges.txt", "open_clip_config.json")  # open_clip folders: their config is read instead
EXTERNAL_DATA_BYTES = 1_500_000_000
log = logging.getLogger(__name__)  # protobuf stops at 2 GiB: larger graphs keep weights in a .data file


def exported_folder(folder: str | Path, fmt: str) -> Path:
    """`folder` itself when it is an export; for a plain checkpoint, its export in the cache (`artifact.cache_path`,
    made on first use), so that ``siglite.load(checkpoint, engine="onnxruntime")`` works without a separate
    `siglite export` step."""
    folder = Path(folder)
    if is_exported(folder):
        return folder
    if not (folder / "config.json").is_file() and not (folder / "open_clip_config.json").is_file():
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

    class ClassifierGraph(nn.Module):
        """A fine-tuned `heads.Classifier`: (last_hidden_state, logits), one pass through the tower."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            hidden = self.model.vision.forward_intermediates(pixel_values, -1, post_norm=True)  # last_hidden_state
            return hidden, self.model.classifier(hidden.mean(dim=1))

    class TextGraph(nn.Module):
        """The text tower with the padding mask as a graph input (always applied: an all-ones mask masks
        nothing, so engines feed ones when the tokenizer returns no mask): pooler_output only."""

        def __init__(self, tower):
            super().__init__()
            self.tower = tower

        def forward(self, input_ids, attention_mask):
            return (self.tower(input_ids, attention_mask)[1],)

    return torch, VisionGraph, TextGraph, ClassifierGraph


def export_onnx_graphs(model, out: Path, *, opset: int = OPSET, num_patches: int | None = None) -> dict:
    """Write ``vision.onnx`` and/or ``text.onnx`` for the towers `model` (a `Siglip`) has.

    num_patches: the fixed patch budget of a NaFlex vision graph (required for those, ignored otherwise).

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
        args, names, dynamic = (pixels,), INPUTS["vision"], ({0: batch},)
        if cfg.variable_resolution:  # NaFlex: patches at one fixed budget, each image's grid as an input
            if not num_patches:
                raise SigliteError("exporting a NaFlex vision tower needs a fixed patch budget (num_patches)")
            patches = torch.zeros(2, num_patches, cfg.num_channels * cfg.patch_size**2)
            side = math.isqrt(num_patches)
            shapes = torch.tensor([[side, num_patches // side], [1, 1]], dtype=torch.int64)
            args, names, dynamic = (patches, shapes), NAFLEX_VISION_INPUTS, ({0: batch}, {0: batch})
        _export(torch, module, args, names, outputs, out / "vision.onnx", opset, dynamic)
        graphs["files"]["vision"], graphs["inputs"]["vision"] = "vision.onnx", names
        if cfg.variable_resolution:
            graphs["num_patches"] = num_patches
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
    from .checkpoints.layout import load_text_tokenizer as load_tokenizer
    from .preprocess.naflex import load_image_config

    image = tokenizer = text_length = None
    dims: dict = {}
    vision_layer, post_norm = None, False
    if model.vision is not None:
        cfg = model.vision.cfg
        image = load_image_config(source_folder).to_dict()
        dims.update(vision_hidden=cfg.hidden_size, vision_tokens=cfg.num_tokens, image_size=cfg.image_size,
                    patch_size=cfg.patch_size)
        if cfg.variable_resolution:  # NaFlex: the vision graph's fixed patch budget
            dims["vision_tokens"] = dims["num_patches"] = graphs.get("num_patches")
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
        dims.update(text_hidden=cfg.hidden_size, projection=cfg.pooled_size)
    return Sidecar(
        format=fmt, precision=precision, engine=FORMATS[fmt]["engine"], source=source,
        files=graphs["files"], inputs=graphs["inputs"], outputs=graphs["outputs"], image=image, tokenizer=tokenizer,
        text_length=text_length, logit_scale=float(model.logit_scale.item()),
        logit_bias=float(model.logit_bias.item()), logits=model.logit_kind, dims=dims,
        producer={"siglite": __version__, "torch": torch.__version__, "exporter": "torch.onnx.export(dynamo=True)",
                  "opset": opset},
        quantization=quantization, vision_layer=vision_layer, post_norm=post_norm,
    )


def export(model: str | Path, out: str | Path, fmt: str = "onnx", *, revision: str | None = None,
           allow_pickle: bool = False, opset: int = OPSET, layer: int | list[int] | None = None,
           post_norm: bool = False, max_num_patches: int | None = None) -> Sidecar:
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
        max_num_patches: NaFlex models: the fixed patch budget of the vision graph (default: the checkpoint's
            image processor's, 256 for the hub checkpoints).

    Returns:
        The written `Sidecar`; then ``siglite.load(out, engine=sidecar.engine)`` serves the folder.
    """
    from .checkpoints import resolve
    from .heads import load_network

    if fmt not in FORMATS:
        raise SigliteError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    source = resolve(model, revision=revision)
    net = cut_model(load_network(source, allow_pickle=allow_pickle), layer, post_norm)
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
        def forward(self, pixels, spatial_shapes=None):
            return self.forward_intermediates(pixels, self.taps, self.post_norm, spatial_shapes), None

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
