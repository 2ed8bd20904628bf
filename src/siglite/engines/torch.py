"""The PyTorch engine: our `model.Siglip` on CPU or CUDA, in fp32, bf16 or fp16."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import SigliteError
from ..model import Siglip

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise SigliteError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


class TorchEngine:
    name = "torch"

    def __init__(self, model: Siglip, device: str | torch.device | None = None, dtype=None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = parse_dtype(dtype, self.device)
        self.precision = str(self.dtype).removeprefix("torch.")
        self.model = model.to(self.device, self.dtype).eval()
        self.logit_scale = float(model.logit_scale.float().item())
        self.logit_bias = float(model.logit_bias.float().item())

    def _tower(self, tower: str):
        module = getattr(self.model, tower)
        if module is None:
            raise SigliteError(f"this checkpoint has no {tower} tower")
        return module

    @torch.inference_mode()
    def encode_image(self, pixels: np.ndarray, tokens: bool = False, spatial_shapes: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray | None]:
        vision = self._tower("vision")
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, self.dtype)
        shapes = None  # NaFlex: the (B, 2) patch grids of (B, N, p*p*3) patches
        if spatial_shapes is not None:
            shapes = torch.from_numpy(np.ascontiguousarray(spatial_shapes)).to(self.device)
        hidden, pooled = vision(x, shapes)
        if pooled is None and not tokens:
            raise SigliteError("this checkpoint has no pooling head (vision_use_head is false); use tokens=True")
        return (_numpy(pooled) if pooled is not None else None), (_numpy(hidden) if tokens else None)

    @torch.inference_mode()
    def encode_text(self, ids: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        text = self._tower("text")
        ids_t = torch.from_numpy(np.ascontiguousarray(ids)).to(self.device)
        mask_t = torch.from_numpy(np.ascontiguousarray(mask)).to(self.device) if mask is not None else None
        return _numpy(text(ids_t, mask_t)[1])


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.float().cpu().numpy()


def create(folder, *, device=None, dtype=None, allow_pickle: bool = False, **_) -> TorchEngine:
    from ..loading import load_model

    _, model = load_model(folder, allow_pickle=allow_pickle)
    return TorchEngine(model, device=device, dtype=dtype)
