"""Model transforms for quantization, and nothing above them: SmoothQuant migration and the layer table (`smooth`),
calibration statistics (`stats`), INT8 for CPU (`int8`: recipe, simulation, plan; `onnx_int8`: the graph rewrite),
FP8 for GPUs (`fp8`), calibration inputs (`calib`) and the report (`report`). `siglite.tasks.quantize` runs them
end to end. Modules import torch and the ONNX tooling, so import them by name."""
