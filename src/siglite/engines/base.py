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
