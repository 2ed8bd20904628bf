"""The small protocol every engine implements, and the registry of engines (imported lazily by name)."""

from __future__ import annotations

import importlib
from typing import Protocol

import numpy as np

from ..errors import SigliteError

# engine name -> (module, the pip extra that provides its runtime)
ENGINES = {
    "torch": ("siglite.engines.torch", None),
    "cuda": ("siglite.engines.cuda", None),
    "onnxruntime": ("siglite.engines.onnxruntime", "onnx"),
    "openvino": ("siglite.engines.openvino", "openvino"),
}


class Engine(Protocol):
    """Runs the two towers on preprocessed inputs; numpy in, float32 numpy out."""

    name: str
    precision: str
    logit_scale: float  # the learned log-scale t (logits use exp(t))
    logit_bias: float
    logit_kind: str  # "sigmoid" (SigLIP: scores independent) or "softmax" (CLIP: scores compete over texts)

    def encode_image(self, pixels: np.ndarray, tokens: bool = False, spatial_shapes: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, 3, H, W) float32 -> pooler_output (N, D), last_hidden_state (N, T, D) if tokens else None.

        NaFlex (variable-resolution) models take (N, L, p*p*3) patches and their (N, 2) int64 (rows, cols) grids
        as `spatial_shapes`; patches past rows*cols are padding (masked)."""
        ...

    def encode_text(self, ids: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """(N, L) int64 token ids, optional (N, L) padding mask -> pooler_output (N, P)."""
        ...


def engine_module(name: str):
    """Import an engine's module, or say which extra to install."""
    if name not in ENGINES:
        raise SigliteError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    module, extra = ENGINES[name]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        hint = f" (pip install 'siglite[{extra}]')" if extra else ""
        raise SigliteError(f"engine {name!r} is not available: {e}{hint}") from e


def check_pooled(has_pooled: bool, tokens: bool) -> None:
    """Raise the one error every engine gives when only pooled features are asked of a model without a pooling
    head (SigLIP with ``vision_use_head: false``): its tokens are all there is."""
    if not has_pooled and not tokens:
        raise SigliteError("this checkpoint has no pooling head (vision_use_head is false); use tokens=True")


def check_device(device: str | None) -> None:
    """Raises a one-line `SigliteError` for a device torch cannot use here (an unknown name such as "gpu", CUDA on a
    build or machine without it, a GPU index past the last one), instead of torch's AssertionError deep in a load."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        hint = "; did you mean 'cuda'?" if str(device).lower() in ("gpu", "nvidia") else ""
        raise SigliteError(f"unknown device {device!r} (cpu, cuda, cuda:N, mps){hint}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "a CPU-only build" if torch.version.cuda is None else "no GPU visible"
            raise SigliteError(f"device {device!r}: torch sees no CUDA GPU (torch {torch.__version__}, {why}); "
                               f"use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SigliteError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
