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
from pathlib import Path

import numpy as np

from ..artifact import read_sidecar
from ..dtypes import canonical
from ..errors import SigliteError
from ..quant.isa import SAFE_SIGNED_MAX, WEIGHT_MAX, detect
from .base import check_pooled

INPUTS = {"vision": ["pixel_values"], "text": ["input_ids", "attention_mask"]}
# runtimes that run signed INT8 weights exactly on any CPU: OpenVINO reads both storage forms without saturating on
# AVX2 too, and runs the signed one faster (measured on an AVX2 EPYC: a 616 x 512 x 2048 MatMulInteger 13.7 ms signed,
# 17.6 ms offset)
SIGNED_ON_ANY_CPU = frozenset({"openvino"})


def int8_weight_dtype(runtime: str, weight_max: int = WEIGHT_MAX) -> str:
    """The storage of INT8 weights within +-`weight_max` that `runtime` computes exactly and fastest on this CPU:
    "int8" (signed) or "uint8" (offset by 128; `siglite.quant.isa`). 7-bit weights are exact signed everywhere.
    `siglite quantize` writes it; engines convert a folder stored otherwise at load (`_convert_to`)."""
    if runtime in SIGNED_ON_ANY_CPU or weight_max <= SAFE_SIGNED_MAX:
        return "int8"
    return detect().weight_dtype


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
        convert = _convert_to(self.sidecar.quantization, int8_weight_dtype(self.name))
        self.logit_scale = self.sidecar.logit_scale
        self.logit_bias = self.sidecar.logit_bias
        self.logit_kind = self.sidecar.logits
        self.graphs = {}
        for tower, name in self.sidecar.files.items():
            with _servable(self.folder / name, convert) as path:
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


def _convert_to(quantization: dict | None, wanted: str) -> str | None:
    """The INT8 weight storage to convert a folder's graphs to at load time (None: serve them as stored). Signed
    8-bit weights on a CPU whose u8*s8 kernels saturate go to the unsigned form (exact u8*u8 kernels); unsigned ones
    on a CPU that runs u8*s8 exactly go to the signed form (faster there). Both lossless; 7-bit signed weights (from
    earlier versions) are exact everywhere and stay."""
    if not quantization:
        return None
    stored = quantization.get("weight_dtype", "int8")
    if stored == wanted or (stored == "int8" and quantization.get("weight_max", 127) <= SAFE_SIGNED_MAX):
        return None
    return wanted


@contextlib.contextmanager
def _servable(path: Path, convert: str | None):
    """`path`, or where INT8 weights must change storage for this CPU, a temporary copy of the ONNX graph with them
    converted (`quant.onnx_int8.convert_weights`, lossless); the folder itself is never modified."""
    if convert is None or path.suffix != ".onnx":
        yield path
        return
    import onnx

    from ..quant.onnx_int8 import convert_weights

    graph = onnx.load(str(path))
    convert_weights(graph, convert)
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
