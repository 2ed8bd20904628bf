"""The ONNX Runtime engine: serves a folder written by `siglite export --format onnx` or `siglite quantize`.

CPU by default; ``device="cuda"`` uses the CUDA execution provider when the installed onnxruntime has it. INT8
graphs (DynamicQuantizeLinear + MatMulInteger, see `siglite.quant.onnx_int8`) are fused by ONNX Runtime's graph
optimizer into its DynamicQuantizeMatMul kernel.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import SigliteError
from .graph import GraphEngine

try:
    import onnxruntime as ort
except ImportError as e:  # engine_module turns this into "pip install 'siglite[onnx]'"
    raise ImportError(f"onnxruntime is not installed ({e})") from e

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


class OnnxRuntimeEngine(GraphEngine):
    name = "onnxruntime"

    def __init__(self, folder: str | Path, *, device: str | None = None, dtype: str | None = None,
                 threads: int | None = None):
        kind = (device or "cpu").split(":")[0]
        if kind not in PROVIDERS:
            raise SigliteError(f"onnxruntime engine: unknown device {device!r}; choose cpu or cuda")
        if kind == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise SigliteError("onnxruntime engine: this onnxruntime build has no CUDA provider "
                               "(pip install onnxruntime-gpu)")
        self.device = kind
        self._providers = PROVIDERS[kind]
        self._options = ort.SessionOptions()
        self._options.log_severity_level = 3  # warnings about hardware-specific fusions are noise here
        threads = threads or int(os.environ.get("SIGLITE_THREADS", 0))
        if threads:
            self._options.intra_op_num_threads = threads
        super().__init__(folder, dtype=dtype)

    def _load(self, path: Path):
        try:
            return ort.InferenceSession(str(path), self._options, providers=self._providers)
        except Exception as e:
            raise SigliteError(f"{path}: onnxruntime cannot load it ({str(e).strip().splitlines()[0][:300]})") from e

    def _run(self, tower: str, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        return self.graphs[tower].run(outputs, feeds)


def create(folder, *, device=None, dtype=None, allow_pickle: bool = False, threads: int | None = None,
           **_) -> OnnxRuntimeEngine:
    return OnnxRuntimeEngine(folder, device=device, dtype=dtype, threads=threads)
