"""Quantization recipes: INT8 for CPU (`int8`, `quantize`: calibration, SmoothQuant migration, sensitivity pass,
ONNX export) and FP8 for GPUs (`fp8`). Modules import torch and the ONNX tooling, so import them by name."""
