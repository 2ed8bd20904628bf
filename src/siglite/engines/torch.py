"""The PyTorch engine: our `model.Siglip` (SigLIP or CLIP) on CPU or CUDA, in fp32, bf16 or fp16."""

from __future__ import annotations

import numpy as np
import torch

from ..dtypes import ALIASES, canonical
from ..errors import SigliteError
from ..model import Siglip
from .base import check_pooled

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """None -> float32; a torch dtype as is; a name or an alias of `siglite.dtypes` ("bf16", "fp16"...)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = canonical(dtype)
    if name not in DTYPES:
        raise SigliteError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)} (or an alias: "
                           f"{', '.join(k for k, v in ALIASES.items() if v in DTYPES)})")
    return DTYPES[name]


class TorchEngine:
    name = "torch"

    def __init__(self, model: Siglip, device: str | torch.device | None = None, dtype=None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = parse_dtype(dtype)
        self.precision = str(self.dtype).removeprefix("torch.")
        self.model = model.to(self.device, self.dtype).eval()
        self.logit_scale = float(model.logit_scale.float().item())
        self.logit_bias = float(model.logit_bias.float().item())
        self.logit_kind = model.logit_kind  # "sigmoid" (SigLIP) or "softmax" (CLIP)

    def _tower(self, tower: str):
        module = getattr(self.model, tower)
        if module is None:
            raise SigliteError(f"this checkpoint has no {tower} tower")
        return module

    supports_layers = True  # encode_image takes layer= / post_norm= (VLM feature taps)

    @torch.inference_mode()
    def encode_image(self, pixels: np.ndarray, tokens: bool = False, layer: int | list[int] | None = None,
                     post_norm: bool = False, spatial_shapes: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray | None]:
        vision = self._tower("vision")
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, self.dtype)
        shapes = None  # NaFlex: the (B, 2) patch grids of (B, N, p*p*3) patches
        if spatial_shapes is not None:
            shapes = torch.from_numpy(np.ascontiguousarray(spatial_shapes)).to(self.device)
        if layer is not None:  # only the blocks up to the deepest tap run; no pooled output
            try:
                return None, _numpy(vision.forward_intermediates(x, layer, post_norm, shapes))
            except ValueError as e:
                raise SigliteError(str(e)) from e
        hidden, pooled = vision(x, shapes)
        check_pooled(pooled is not None, tokens)
        return (_numpy(pooled) if pooled is not None else None), (_numpy(hidden) if tokens else None)

    @torch.inference_mode()
    def encode_text(self, ids: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        text = self._tower("text")
        ids_t = torch.from_numpy(np.ascontiguousarray(ids)).to(self.device)
        mask_t = torch.from_numpy(np.ascontiguousarray(mask)).to(self.device) if mask is not None else None
        return _numpy(text(ids_t, mask_t)[1])

    @torch.inference_mode()
    def image_logits(self, pixels: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) -> classifier logits (N, C), for a fine-tuned classifier (`siglite.heads.Classifier`)."""
        if not hasattr(self.model, "classifier"):
            raise SigliteError("this checkpoint has no classification head (see `siglite finetune`)")
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, self.dtype)
        return _numpy(self.model(x))


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.float().cpu().numpy()


def create(folder, *, device=None, dtype=None, allow_pickle: bool = False, **_) -> TorchEngine:
    from ..heads import load_network

    model = load_network(folder, allow_pickle=allow_pickle)  # a Siglip, or a fine-tuned Classifier
    return TorchEngine(model, device=device, dtype=dtype)
