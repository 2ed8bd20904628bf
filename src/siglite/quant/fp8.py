"""FP8 (E4M3) W8A8 linear layers for the vision tower, with calibration and outlier handling.

The recipe (`RECIPES["dynamic"]`, the default):

* weights: one scale per output channel, ``amax(|W[n, :]|) / 448``;
* activations: one scale per token, computed on the fly (``amax(|x[t, :]|) / 448``), or, with
  `RECIPES["static"]`, one calibrated scale per tensor;
* outliers: SmoothQuant migration (`siglite.quant.smooth`, shared with INT8: the same layer table, factors and
  folds into the LayerNorm before qkv and fc1 and into the V rows of qkv for the attention output projection); the
  strength ``a`` is measured per layer: the value in `Recipe.alphas` (0 = no migration) with the smallest FP8
  output error on the calibration activations (`siglite.quant.stats`, shared with INT8 too).

On Hopper (and Ada) GPUs the matmul is ``torch._scaled_mm`` on FP8 operands; anywhere else an exact emulation runs the
same arithmetic: quantize to ``float8_e4m3fn``, dequantize, multiply in float32, round the result to the output dtype,
add the bias. The two differ only in the GEMM's accumulation order (and on the GPU its accumulator width), which the
GPU tests measure.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .smooth import block_layers, migrate, search_alpha
from .stats import InputStats, collect

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0  # largest finite float8_e4m3fn
MIN_AMAX = 1e-12  # an all-zero row still gets a finite, non-zero scale
SAMPLE_ROWS = 1024  # calibration tokens kept per layer for the alpha search


@dataclass(frozen=True)
class Recipe:
    """How to quantize: weight and activation scale granularity, and whether to migrate outliers.

    Attributes:
        weights: "channel" (one scale per output channel) or "tensor" (one per weight matrix).
        activations: "token" (dynamic, one scale per row of the input) or "static" (one calibrated scale per layer).
        smooth: search a SmoothQuant migration strength per layer (over `alphas`; 0 means none).
        alphas: migration strengths to try.
        fast_accum: let the FP8 GEMM keep partial sums at the tensor cores' reduced precision (faster, less exact;
            `_scaled_mm(use_fast_accum=True)`). The CPU emulation always accumulates in float32.
    """

    weights: str
    activations: str
    smooth: bool
    alphas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)
    fast_accum: bool = False


RECIPES = {
    "dynamic": Recipe("channel", "token", smooth=True),
    "static": Recipe("channel", "static", smooth=True),
    "dynamic-fast": Recipe("channel", "token", smooth=True, fast_accum=True),
    # What a plain post-training FP8 conversion does; kept to measure what the recipe above buys.
    "naive": Recipe("tensor", "static", smooth=False),
}


# -- scales and (de)quantization --------------------------------------------------------------------------------------


def amax_scale(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """``amax(|x|) / 448`` in float32 over `dim` (kept as size 1), or over the whole tensor (a 0-d tensor)."""
    a = x.detach().abs().float()
    a = a.amax() if dim is None else a.amax(dim=dim, keepdim=True)
    return a.clamp_min(MIN_AMAX) / E4M3_MAX


def weight_scales(weight: torch.Tensor, granularity: str = "channel") -> torch.Tensor:
    """(N, K) weight -> (N, 1) per-output-channel scales, or a 0-d per-tensor scale."""
    return amax_scale(weight, dim=1) if granularity == "channel" else amax_scale(weight)


def token_scales(x: torch.Tensor) -> torch.Tensor:
    """(..., K) activations -> (..., 1) per-token scales."""
    return amax_scale(x, dim=-1)


def quantize(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x / scale, saturated to +-448 (the cast alone does not saturate on every device), as float8_e4m3fn."""
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale


def fake_quant(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float32 value FP8 storage turns `x` into."""
    return dequantize(quantize(x, scale), scale)


def scaled_mm_supported(device: torch.device, in_features: int, out_features: int) -> bool:
    """Whether `torch._scaled_mm` can run this layer: an SM 8.9+ GPU and dimensions divisible by 16."""
    if device.type != "cuda" or in_features % 16 or out_features % 16:
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


# -- the layer --------------------------------------------------------------------------------------------------------


class FP8Linear(nn.Module):
    """A linear layer with FP8 weights and activations; input and output in `out_dtype` (bfloat16 by default).

    Args:
        weight: (N, K) float weight (already smoothed, if migrating).
        bias: (N,) or None.
        recipe: scale granularity.
        act_scale: the calibrated per-tensor input scale, for `activations="static"`.
        out_dtype: dtype of the output (and of the rounding after the matmul).
        backend: "scaled_mm", "emulate", or None to pick `scaled_mm` where the hardware has FP8.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, recipe: Recipe, *,
                 act_scale: torch.Tensor | None = None, out_dtype: torch.dtype = torch.bfloat16,
                 backend: str | None = None):
        super().__init__()
        if recipe.activations == "static" and act_scale is None:
            raise ValueError("static activation scales need a calibrated act_scale")
        self.out_features, self.in_features = weight.shape
        self.recipe = recipe
        self.out_dtype = out_dtype
        w_scale = weight_scales(weight, recipe.weights)
        self.register_buffer("qweight", quantize(weight, w_scale))  # (N, K) float8_e4m3fn
        # scaled_mm wants the weight scales as (1, N) for rowwise scaling, a 0-d tensor for tensorwise
        self.register_buffer("w_scale", w_scale.reshape(1, -1) if w_scale.dim() else w_scale)
        self.register_buffer("act_scale", None if act_scale is None else act_scale.float().reshape(()))
        self.register_buffer("bias", None if bias is None else bias.detach().to(out_dtype))
        if backend is None:
            backend = "scaled_mm" if scaled_mm_supported(weight.device, *weight.shape[::-1]) else "emulate"
        if backend not in ("scaled_mm", "emulate"):
            raise ValueError(f"unknown FP8 backend {backend!r}; choose scaled_mm or emulate")
        self.backend = backend
        # the emulation multiplies by the dequantized weight; keeping it saves redoing that every call
        self.register_buffer("_w_deq", dequantize(self.qweight, w_scale) if backend == "emulate" else None,
                             persistent=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, recipe: Recipe, **kw) -> FP8Linear:
        return cls(linear.weight.detach(), None if linear.bias is None else linear.bias.detach(), recipe, **kw)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, weights={self.recipe.weights}, "
                f"activations={self.recipe.activations}, backend={self.backend}")

    def input_scale(self, x2d: torch.Tensor) -> torch.Tensor:
        """(M, K) input -> (M, 1) dynamic per-token scales, or the static 0-d scale."""
        return token_scales(x2d) if self.recipe.activations == "token" else self.act_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)  # (M, K)
        s_x = self.input_scale(x2)
        xq = quantize(x2, s_x)
        if self.backend == "scaled_mm":
            s_a = s_x
            if self.w_scale.dim() and s_x.dim() == 0:  # rowwise weight scales need rowwise input scales too
                s_a = s_x.expand(x2.shape[0], 1).contiguous()
            y = torch._scaled_mm(xq, self.qweight.t(), scale_a=s_a, scale_b=self.w_scale, out_dtype=self.out_dtype,
                                 use_fast_accum=self.recipe.fast_accum)
        else:
            y = (dequantize(xq, s_x) @ self._w_deq.t()).to(self.out_dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)


# -- calibration ------------------------------------------------------------------------------------------------------


def _quant_error(x: torch.Tensor, w: torch.Tensor, recipe: Recipe, act_amax: torch.Tensor | None = None) -> float:
    """Relative squared error of the FP8 product x @ w.T against float32, as `recipe` quantizes it."""
    ref = x @ w.t()
    xs = token_scales(x) if recipe.activations == "token" else (act_amax / E4M3_MAX).clamp_min(MIN_AMAX / E4M3_MAX)
    out = fake_quant(x, xs) @ fake_quant(w, weight_scales(w, recipe.weights)).t()
    return float((out - ref).pow(2).sum() / ref.pow(2).sum().clamp_min(1e-30))


def choose_alpha(stats: InputStats, weight: torch.Tensor, recipe: Recipe) -> tuple[float, torch.Tensor, dict]:
    """Measure each migration strength on the sampled calibration rows; return the best (alpha, s, errors)."""
    x = stats.sample()  # (<= SAMPLE_ROWS, K), on the device: the search is a few GEMMs per layer
    w = weight.detach().float()
    amax = stats.amax
    alpha, s, errors = search_alpha(amax, w, recipe.alphas if recipe.smooth else (),
                                    lambda s: _quant_error(x / s, w * s, recipe, (amax / s).amax()))
    return alpha, s.to(weight.device), errors


@torch.no_grad()
def quantize_vision(vision: nn.Module, calib: torch.Tensor, recipe: Recipe | str = "dynamic", *,
                    out_dtype: torch.dtype = torch.bfloat16, backend: str | None = None,
                    batch_size: int = 8) -> list[dict]:
    """Replace the linear layers of every vision block with `FP8Linear`s, in place.

    Args:
        vision: a float32 `VisionTower` (on the device it will run on).
        calib: (N, 3, H, W) float32 calibration pixels (see `synthetic_pixels` when no images are at hand).
        recipe: a `Recipe` or a key of `RECIPES`.
        out_dtype: the dtype the rest of the model runs in.
        backend: passed to `FP8Linear`.
        batch_size: calibration images per forward pass.

    Returns:
        One record per quantized layer: name, chosen alpha, measured relative error per alpha, static input amax.
    """
    recipe = RECIPES[recipe] if isinstance(recipe, str) else recipe
    dev = next(vision.parameters()).device
    layers = block_layers(vision)
    batches = [calib[i:i + batch_size].to(dev, torch.float32) for i in range(0, len(calib), batch_size)]

    def run():
        with torch.inference_mode():
            for batch in batches:
                vision(batch)

    stats = collect({name: vision.get_submodule(name) for name, _, _ in layers}, run, sample_rows=SAMPLE_ROWS,
                    per_batch=SAMPLE_ROWS // 4)
    records = []
    for name, fold, kind in layers:
        st = stats[name]
        alpha, s, errors = choose_alpha(st, vision.get_submodule(name).weight,
                                        recipe if fold else _no_smoothing(recipe))
        if alpha:
            migrate(vision, name, fold, kind, s)
        st.scale(s)  # the static scale must see the smoothed input
        records.append({"layer": name, "alpha": alpha, "errors": errors, "input_amax": float(st.amax.amax())})
    # Replace only after every fold: a fold into qkv's V rows must land before qkv is quantized.
    for name, _, _ in layers:
        parent_name, _, attr = name.rpartition(".")
        parent = vision.get_submodule(parent_name)
        act_scale = (stats[name].amax.amax() / E4M3_MAX).clamp_min(MIN_AMAX) if recipe.activations == "static" \
            else None
        setattr(parent, attr, FP8Linear.from_linear(getattr(parent, attr), recipe, act_scale=act_scale,
                                                    out_dtype=out_dtype, backend=backend))
    return records


def _no_smoothing(recipe: Recipe) -> Recipe:
    return dataclasses.replace(recipe, smooth=False)


def synthetic_pixels(n: int, size: int | tuple[int, int], *, seed: int = 0) -> torch.Tensor:
    """(n, 3, H, W) float32 calibration images in [-1, 1] without any data: smooth colour fields at a few spatial
    scales plus fine texture, so activations span a natural-image-like range. Real images calibrate better."""
    H, W = (size, size) if isinstance(size, int) else size
    gen = torch.Generator().manual_seed(seed)
    img = torch.zeros(n, 3, H, W)
    for cells, weight in ((2, 1.0), (6, 0.6), (24, 0.3), (H, 0.1)):
        noise = torch.rand(n, 3, cells, cells, generator=gen) * 2 - 1
        img += weight * F.interpolate(noise, size=(H, W), mode="bilinear", align_corners=False)
    return img.clamp(-1, 1)
