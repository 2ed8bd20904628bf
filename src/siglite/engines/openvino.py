"""The OpenVINO engine: serves a folder written by `siglite export --format openvino` (IR) or ``--format onnx``
(OpenVINO reads ONNX too), on the CPU plugin by default.

Inference runs in float32 (``INFERENCE_PRECISION_HINT``): on CPUs with bf16 units OpenVINO would otherwise pick
bf16 on its own and break parity with the torch path.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import SigliteError
from .graph import GraphEngine

try:
    import openvino as ov
except ImportError as e:  # engine_module turns this into "pip install 'siglite[openvino]'"
    raise ImportError(f"openvino is not installed ({e})") from e

DEVICES = {"cpu": "CPU", "gpu": "GPU", "npu": "NPU", "auto": "AUTO"}


class OpenVinoEngine(GraphEngine):
    name = "openvino"

    def __init__(self, folder: str | Path, *, device: str | None = None, dtype: str | None = None,
                 threads: int | None = None):
        kind = (device or "cpu").lower()
        if kind not in DEVICES:
            raise SigliteError(f"openvino engine: unknown device {device!r}; choose one of {', '.join(DEVICES)}")
        self.device = kind
        self._core = ov.Core()
        self._config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        threads = threads or int(os.environ.get("SIGLITE_THREADS", 0))
        if threads and kind == "cpu":
            self._config["INFERENCE_NUM_THREADS"] = threads
        super().__init__(folder, dtype=dtype)

    def _load(self, path: Path):
        try:
            compiled = self._core.compile_model(self._core.read_model(str(path)), DEVICES[self.device], self._config)
        except Exception as e:
            raise SigliteError(f"{path}: openvino cannot load it ({str(e).strip().splitlines()[0][:300]})") from e
        return compiled

    def _run(self, tower: str, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        compiled = self.graphs[tower]
        # a fresh request per call keeps the engine safe to share between threads
        result = compiled.create_infer_request().infer(feeds)
        return [np.asarray(result[compiled.output(name)]) for name in outputs]


def create(folder, *, device=None, dtype=None, allow_pickle: bool = False, threads: int | None = None,
           **_) -> OpenVinoEngine:
    return OpenVinoEngine(folder, device=device, dtype=dtype, threads=threads)
