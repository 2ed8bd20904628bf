"""The base of the engines that serve exported graphs (ONNX Runtime, OpenVINO): sidecar, feeds, output selection.

Graphs (dynamic batch, float32 in and out), as `siglite.export` writes them:

* vision: ``pixel_values`` (N, 3, H, W) -> ``last_hidden_state`` (N, T, D), ``pooler_output`` (N, D);
* vision, NaFlex (variable-resolution) models: ``pixel_values`` (N, P, p*p*3) patches at the fixed patch budget P
  chosen at export, ``spatial_shapes`` (N, 2) int64 -> the same outputs (P tokens; those past rows*cols are padding);
* text: ``input_ids`` (N, L) int64, ``attention_mask`` (N, L) int64 -> ``pooler_output`` (N, P). The mask is
  always an input; the engine feeds ones when the tokenizer returns none (the same function: no key is masked).

An engine only serves a folder that is already exported: it never runs an export itself (``siglite.load`` does that,
once and cached, when asked for a graph engine on a plain checkpoint).
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from pathlib import Path

import numpy as np

from ..artifact import read_sidecar
from ..dtypes import canonical
from ..errors import SigliteError
from ..quant.isa import SAFE_WEIGHT_MAX, detect
from .base import check_pooled

INPUTS = {"vision": ["pixel_values"], "text": ["input_ids", "attention_mask"]}


class GraphEngine:
    """The part of an engine for exported graphs that does not depend on the runtime.

    Subclasses load each tower's graph in `_load(path)` and run it in `_run(tower, feeds, outputs)`.

    Args:
        folder: an exported or quantized folder (with ``siglite.json``).
        dtype: optional; must name the precision the folder was exported in (it is fixed at export time).
    """

    name = "graph"
    supports_layers = True  # a tower exported cut at a layer serves that layer (and refuses any other)

    def __init__(self, folder: str | Path, *, dtype: str | None = None):
        self.folder = Path(folder)
        self.sidecar = read_sidecar(self.folder)
        if dtype is not None and canonical(dtype) != self.sidecar.precision:
            raise SigliteError(f"{self.folder}: exported in {self.sidecar.precision}; its precision is fixed at "
                               f"export time (asked for {dtype})")
        self.precision = self.sidecar.precision
        narrow = _narrow_to(self.folder, self.sidecar.quantization)
        self.logit_scale = self.sidecar.logit_scale
        self.logit_bias = self.sidecar.logit_bias
        self.logit_kind = self.sidecar.logits
        self.graphs = {}
        for tower, name in self.sidecar.files.items():
            with _servable(self.folder / name, narrow) as path:
                self.graphs[tower] = self._load(path)
        # NaFlex: the vision graph's fixed patch budget; the pipeline pads every batch to it
        self.num_patches = self.sidecar.dims.get("num_patches")

    def _load(self, path: Path):  # pragma: no cover - abstract
        raise NotImplementedError

    def _run(self, tower: str, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        raise NotImplementedError  # pragma: no cover - abstract

    def _tower(self, tower: str) -> None:
        if tower not in self.graphs:
            raise SigliteError(f"{self.folder}: this export has no {tower} tower")

    def encode_image(self, pixels: np.ndarray, tokens: bool = False, layer: int | list[int] | None = None,
                     post_norm: bool = False, spatial_shapes: np.ndarray | None = None
                     ) -> tuple[np.ndarray | None, np.ndarray | None]:
        self._tower("vision")
        self._check_layer(layer, post_norm)
        has_pooled = "pooler_output" in self.sidecar.outputs["vision"]
        check_pooled(has_pooled, tokens)
        wanted = (["pooler_output"] if has_pooled else []) + (["last_hidden_state"] if tokens else [])
        feeds = {"pixel_values": np.ascontiguousarray(pixels, np.float32)}
        if spatial_shapes is not None:  # NaFlex graphs
            feeds["spatial_shapes"] = np.ascontiguousarray(spatial_shapes, np.int64)
        got = dict(zip(wanted, self._run("vision", feeds, wanted)))
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


def _narrow_to(folder: Path, quantization: dict | None) -> int | None:
    """The weight range to serve INT8 weights in on this CPU: None (as stored) unless they use the full 8-bit range
    and this CPU's u8*s8 kernels can saturate (see `siglite.quant.isa`), where they are re-quantized to 7 bits at
    load time (exact there; one bit of weight precision less than the 8-bit model measured), with a warning."""
    wmax = (quantization or {}).get("weight_max")
    if wmax is None or wmax <= SAFE_WEIGHT_MAX:
        return None
    isa = detect()
    if isa.exact:
        return None
    warnings.warn(f"{folder}: INT8 weights use the full 8-bit range (quantized for {quantization.get('cpu_isa')}), "
                  f"but this CPU ({isa.name}) can saturate u8*s8 pair sums: serving them re-quantized to 7 bits "
                  f"(quantize on this CPU, or with SIGLITE_CPU_ISA={isa.name}, for weights measured as served)",
                  stacklevel=3)
    return SAFE_WEIGHT_MAX


@contextlib.contextmanager
def _servable(path: Path, narrow: int | None):
    """`path`, or where INT8 weights must be narrowed for this CPU, a temporary copy of the ONNX graph with them
    re-quantized (`quant.onnx_int8.narrow_weights`); the folder itself is never modified."""
    if narrow is None or path.suffix != ".onnx":
        yield path
        return
    import onnx

    from ..quant.onnx_int8 import narrow_weights

    graph = onnx.load(str(path))
    narrow_weights(graph, narrow)
    with tempfile.TemporaryDirectory(prefix="siglite-int8-") as tmp:
        copy = Path(tmp) / path.name
        onnx.save(graph, str(copy), save_as_external_data=graph.ByteSize() > 1_800_000_000,
                  location=path.name + ".data")
        yield copy


def normalize_layers(layer: int | list[int], depth: int) -> list[int]:
    """hidden_states indices (negative from the end) of a tower of `depth` blocks -> non-negative indices."""
    out = []
    for k in [layer] if isinstance(layer, int) else list(layer):
        if not -(depth + 1) <= int(k) <= depth:
            raise SigliteError(f"layer {k} is out of range for a vision tower of {depth} blocks")
        out.append(int(k) % (depth + 1))
    return out
