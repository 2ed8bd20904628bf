"""The GPU engine: `TorchEngine` made fast and fp16-safe, with FP8 as one of its precisions.

What it adds to the torch engine, on the same `model.Siglip` (its forward code is not copied, only its layers are
swapped for mixed-precision ones):

* precisions as data (`PRECISIONS`): the dtype the GEMMs and attention run in, the dtype of the residual stream, and
  an optional FP8 recipe (`siglite.quant.fp8`) for the vision blocks' linear layers;
* fp16 without overflow: trained so400m has residual-stream activations past fp16's 65504. In "float16" the residual
  stream, the LayerNorms and the outputs of the layers that write into it (attention out-projection, fc2, heads) are
  float32; only GEMM operands and attention are fp16, and the writers' GEMMs return float32 directly
  (fp16 x fp16 products are exact in float32), so no value is ever rounded back into fp16's range;
* fused fc1 + bias + tanh-GELU (a cuBLASLt epilogue) on CUDA;
* regional `torch.compile` (one compiled transformer block, reused by every layer: compile time does not grow with
  depth), falling back to eager with a warning if compilation fails;
* CUDA graphs per batch size (`GraphRunner`): captured on first use, partial batches padded up to the nearest captured
  size and the outputs sliced;
* pinned host buffers and host-to-device copies on a side stream, overlapped with the previous chunk's compute;
  `encode_image` also takes pixels already on the GPU, as `siglite.preprocess.gpu.decode_batch_gpu` (nvJPEG decode
  and on-GPU resize) makes them.

It runs on the CPU too (`device="cpu"`): there FP8 is emulated exactly and CUDA graphs are replaced by the same
padding logic without capture, which is how the CPU test suite checks everything but speed.

SigLIP 2 NaFlex (variable-resolution) towers run at one fixed patch budget (`num_patches`, default the checkpoint's
processor's): the pipeline pads every batch to it, so a captured graph sees static shapes, (B, num_patches, p*p*3)
patches and (B, 2) `spatial_shapes` as two graph inputs. The per-image position-embedding resize
(`model.resize_pos_embed`) is written as batched tensor arithmetic on `spatial_shapes` with no host read, which is
what capture needs (torch.export traces it with `spatial_shapes` as an input, see `siglite.export`); it has not yet
been captured on a GPU, so a capture that fails falls back to eager for that batch size with a warning. FP8 is not
offered for NaFlex (its calibration takes fixed-size pixels).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..dtypes import canonical
from ..errors import SigliteError
from ..model import Siglip
from ..quant.fp8 import quantize_vision, synthetic_pixels
from .base import check_pooled
from .torch import TorchEngine


@dataclass(frozen=True)
class Precision:
    """One precision of the engine.

    Attributes:
        compute: dtype of GEMM operands and attention.
        residual: dtype of the residual stream, the LayerNorm inputs and last_hidden_state.
        fp8: a key of `siglite.quant.fp8.RECIPES`: the vision blocks' linear layers run in FP8 with it.
    """

    compute: torch.dtype
    residual: torch.dtype
    fp8: str | None = None


PRECISIONS = {
    "bfloat16": Precision(torch.bfloat16, torch.bfloat16),  # bf16 has float32's range: nothing overflows
    "float16": Precision(torch.float16, torch.float32),
    "fp8": Precision(torch.bfloat16, torch.bfloat16, fp8="dynamic"),
    "fp8-static": Precision(torch.bfloat16, torch.bfloat16, fp8="static"),
    "fp8-fast": Precision(torch.bfloat16, torch.bfloat16, fp8="dynamic-fast"),  # fast accumulation in the FP8 GEMMs
    "float32": Precision(torch.float32, torch.float32),
}
DEFAULT_PRECISION = "bfloat16"
GRAPH_SIZES = (1, 2, 4, 8, 16, 32, 64)  # captured batch sizes; larger inputs are cut into chunks of the largest
CALIB_IMAGES = 32  # synthetic calibration images for FP8 when none are given
TANH_GELU = ("gelu_pytorch_tanh", "gelu_new")  # activations the cuBLASLt GELU epilogue computes exactly
WARMUP_RUNS = 2  # eager runs before a capture (compiles, autotunes, allocates)
COMPILE_MODES = {"default": None, "max-autotune": "max-autotune-no-cudagraphs",
                 "max-autotune-no-cudagraphs": "max-autotune-no-cudagraphs", "reduce-overhead": "reduce-overhead"}


def parse_precision(dtype: str | torch.dtype | None) -> str:
    """"bf16", torch.float16, "fp8", ... -> a key of `PRECISIONS`."""
    if dtype is None:
        return DEFAULT_PRECISION
    name = canonical(dtype)
    if name not in PRECISIONS:
        raise SigliteError(f"unknown precision {dtype!r} for engine 'cuda'; choose one of {', '.join(PRECISIONS)}")
    return name


# -- mixed-precision layers -------------------------------------------------------------------------------------------


class MixedLinear(nn.Module):
    """A linear layer whose GEMM runs in `compute` and whose output is returned in `out_dtype`.

    With out_dtype wider than compute (float16 -> float32), the GEMM writes float32 itself, so outputs past fp16's
    range survive. With `gelu`, fc1's tanh-GELU is fused into the GEMM (cuBLASLt epilogue; CUDA only).
    """

    def __init__(self, linear: nn.Linear, compute: torch.dtype, out_dtype: torch.dtype, *, gelu: bool = False):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.out_dtype = out_dtype
        self.wide = out_dtype != compute
        self.gelu = gelu
        self.weight = nn.Parameter(linear.weight.detach().to(compute), requires_grad=False)
        bias = None if linear.bias is None else linear.bias.detach().to(out_dtype)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.wide_mm = self.wide and _wide_mm_supported(self.weight.device)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, compute={self.weight.dtype}, "
                f"out={self.out_dtype}, gelu={self.gelu}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.weight.dtype)
        if not self.wide:
            if self.gelu:
                lead = x.shape[:-1]
                y = torch._addmm_activation(self.bias, x.reshape(-1, self.in_features), self.weight.t(), use_gelu=True)
                return y.reshape(*lead, self.out_features)
            return F.linear(x, self.weight, self.bias)
        if self.wide_mm:
            lead = x.shape[:-1]
            y = torch.mm(x.reshape(-1, self.in_features), self.weight.t(), out_dtype=torch.float32)
            y = y.reshape(*lead, self.out_features)
        else:  # the same arithmetic where mm(out_dtype=) is missing: fp16 values, float32 products and sums
            y = F.linear(x.float(), self.weight.float())
        return y if self.bias is None else y + self.bias


class MixedLayerNorm(nn.Module):
    """LayerNorm computed in its parameters' dtype (the residual dtype), its output cast to `out_dtype`."""

    def __init__(self, norm: nn.LayerNorm, param_dtype: torch.dtype, out_dtype: torch.dtype):
        super().__init__()
        self.shape, self.eps, self.out_dtype = norm.normalized_shape, norm.eps, out_dtype
        self.weight = nn.Parameter(norm.weight.detach().to(param_dtype), requires_grad=False)
        self.bias = nn.Parameter(norm.bias.detach().to(param_dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.to(self.weight.dtype), self.shape, self.weight, self.bias, self.eps).to(self.out_dtype)


def _writes_residual(name: str) -> bool:
    """Linear layers (names inside a tower) whose output is added to the residual stream or is a tower output
    (NaFlex's linear patch embedding starts the residual stream)."""
    return name in ("head", "patch_embed") or name.endswith(("proj", "fc2"))


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def convert(model: Siglip, precision: Precision, *, fuse_gelu: bool = False) -> Siglip:
    """Swap `model`'s float32 layers for mixed-precision ones, in place: linear layers -> `MixedLinear`, LayerNorms ->
    `MixedLayerNorm`, every other parameter (embeddings, probe, patch convolution) -> the residual dtype.
    `FP8Linear`s already in the model are kept as they are."""
    for tower in (model.vision, model.text):
        if tower is None:
            continue
        for p in tower.parameters():
            p.data = p.data.to(precision.residual)
        for name, module in list(tower.named_modules()):
            parent_name, _, attr = name.rpartition(".")
            parent = tower.get_submodule(parent_name) if parent_name else tower
            if isinstance(module, nn.Linear):
                out = precision.residual if _writes_residual(name) else precision.compute
                fused = fuse_gelu and attr == "fc1" and tower.cfg.hidden_act in TANH_GELU
                setattr(parent, attr, MixedLinear(module, precision.compute, out, gelu=fused))
                if fused:
                    parent.act = _identity
            elif isinstance(module, nn.LayerNorm):
                # the final norm is an output; CLIP's pre-norm writes the residual stream itself
                out = precision.residual if name in ("norm", "pre_norm") else precision.compute
                setattr(parent, attr, MixedLayerNorm(module, precision.residual, out))
    return model


@cache
def _wide_mm_supported(device: torch.device) -> bool:
    """Whether torch.mm(fp16, fp16, out_dtype=float32) runs here (CUDA builds of recent torch)."""
    if device.type != "cuda":
        return False
    try:
        a = torch.ones(16, 16, dtype=torch.float16, device=device)
        return torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
    except (RuntimeError, TypeError, NotImplementedError):
        warnings.warn("torch.mm(out_dtype=float32) is not available: fp16 residual writers fall back to float32 "
                      "GEMMs (slower); upgrade torch for full fp16 speed", stacklevel=2)
        return False


@cache
def _fused_gelu_supported(device: torch.device) -> bool:
    """Whether addmm's fused GELU here is the tanh approximation (cuBLASLt's epilogue is; the CPU kernel is not)."""
    if device.type != "cuda":
        return False
    # float32, inputs giving pre-activations of a few units: there tanh and erf GELU differ by up to ~5e-4
    g = torch.Generator(device="cpu").manual_seed(0)
    x, w, b = (torch.randn(s, generator=g).to(device) * 0.25 for s in ((64, 64), (64, 64), (64,)))
    try:
        fused = torch._addmm_activation(b, x, w.t(), use_gelu=True)
    except RuntimeError:
        return False
    pre = F.linear(x.double(), w.double(), b.double())
    err_tanh = float((fused.double() - F.gelu(pre, approximate="tanh")).abs().max())
    err_erf = float((fused.double() - F.gelu(pre)).abs().max())
    return err_tanh < 1e-4 and err_tanh < err_erf


# -- CUDA graphs ------------------------------------------------------------------------------------------------------


class GraphRunner:
    """Runs `fn` on a fixed set of batch sizes; with `capture`, as CUDA graphs captured per size on first use.

    A batch of n rows runs at the smallest size >= n: the input is copied into that size's static buffer (rows past n
    keep whatever they held; rows never interact), and the outputs are sliced back to n. The outputs are views of
    static buffers, valid until the next call: consume them (e.g. enqueue the device-to-host copy) first. All graphs
    share one memory pool, which is safe because they never replay concurrently and outputs are consumed at once.

    Args:
        fn: one or more (size, ...) tensors -> tuple of tensors (or None) with batch first.
        sizes: batch sizes to run at; n must not exceed the largest.
        capture: capture CUDA graphs (False: call `fn` on the padded input, the same logic without a GPU). A capture
            that raises falls back to calling `fn` for that size, with a warning.

    Padding rows of integer inputs (NaFlex's `spatial_shapes`) hold ones, a valid 1x1 grid, so padded rows compute
    finite values.
    """

    def __init__(self, fn: Callable[[torch.Tensor], tuple], sizes: Sequence[int], *, capture: bool):
        if not sizes or min(sizes) < 1:
            raise ValueError(f"graph batch sizes must be positive, got {sizes!r}")
        self.fn = fn
        self.sizes = tuple(sorted({int(s) for s in sizes}))
        self.capture = capture
        self.captured: dict[int, tuple] = {}  # size -> (static input, static outputs or None, graph or None)
        self._pool = None

    @property
    def max_size(self) -> int:
        return self.sizes[-1]

    def bucket(self, n: int) -> int:
        """The batch size n rows run at."""
        if not 1 <= n <= self.max_size:
            raise ValueError(f"batch of {n} rows; this runner takes 1..{self.max_size}")
        return next(s for s in self.sizes if s >= n)

    def __call__(self, *xs: torch.Tensor) -> tuple:
        n = xs[0].shape[0]
        statics, static_out, graph = self.captured.get(self.bucket(n)) or self._prepare(self.bucket(n), xs)
        for static, x in zip(statics, xs):
            static[:n].copy_(x)
        if graph is not None:
            graph.replay()
            out = static_out
        else:
            out = self.fn(*statics)
        return tuple(None if o is None else o[:n] for o in out)

    def _prepare(self, size: int, like: tuple[torch.Tensor, ...]) -> tuple:
        statics = tuple((torch.zeros if x.is_floating_point() else torch.ones)((size, *x.shape[1:]), dtype=x.dtype,
                                                                                device=x.device) for x in like)
        entry = (statics, None, None)
        if self.capture:
            device = like[0].device
            try:
                # Warm-up on a side stream, as torch.cuda.graphs requires: compiles, autotunes, fills the allocator.
                side = torch.cuda.Stream(device)
                side.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(side):
                    for _ in range(WARMUP_RUNS):
                        self.fn(*statics)
                torch.cuda.current_stream(device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                if self._pool is None:
                    self._pool = torch.cuda.graph_pool_handle()
                with torch.cuda.graph(graph, pool=self._pool):
                    static_out = self.fn(*statics)
                entry = (statics, static_out, graph)
            except RuntimeError as e:  # e.g. an op that synchronises with the host: eager is always there
                warnings.warn(f"CUDA graph capture failed for batch size {size} ({str(e).splitlines()[0][:200]}); "
                              "running it eagerly", stacklevel=3)
        self.captured[size] = entry
        return entry


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    """(start, stop) of consecutive chunks of at most `size` rows covering n rows."""
    return [(i, min(i + size, n)) for i in range(0, n, size)]


# -- the engine -------------------------------------------------------------------------------------------------------


class CudaEngine(TorchEngine):
    """`TorchEngine` with mixed precision, FP8, regional compile, CUDA graphs and overlapped input copies.

    Args:
        model: a float32 `Siglip` (moved to `device`, converted in place).
        device: "cuda", "cuda:1", ...; "cpu" runs the same code without compile, graphs or FP8 hardware.
        dtype: a key of `PRECISIONS` or an alias ("bf16", "fp16", "fp8", ...); default bfloat16.
        calib: (N, 3, H, W) float32 calibration pixels for FP8 (default: `synthetic_pixels`; real images are better).
        compile: a key of `COMPILE_MODES`, or None/False for eager; default "default" on CUDA, eager elsewhere.
        graphs: capture CUDA graphs; default on CUDA. True on the CPU runs the padding logic without capture.
        graph_sizes: the batch sizes to capture; inputs are cut into chunks of the largest.
        fp8_backend: "scaled_mm" or "emulate" to force the FP8 matmul; default by hardware.
        max_num_patches: SigLIP 2 NaFlex towers: the fixed patch budget every batch is padded to (`num_patches`;
            default the tower's position grid, which is the hub checkpoints' processor budget, 256; `create` passes
            the checkpoint processor's). Ignored for fixed-resolution towers.
    """

    name = "cuda"

    def __init__(self, model: Siglip, device: str | torch.device | None = None, dtype=None, *,
                 calib: np.ndarray | torch.Tensor | None = None, compile: str | None | bool = "auto",
                 graphs: bool | None = None, graph_sizes: Sequence[int] = GRAPH_SIZES, fp8_backend: str | None = None,
                 max_num_patches: int | None = None):
        device = _engine_device(device)
        precision = parse_precision(dtype)
        spec = PRECISIONS[precision]
        naflex = model.vision is not None and model.vision.cfg.variable_resolution
        if naflex and spec.fp8:
            raise SigliteError(f"precision {precision!r}: FP8 is not offered for SigLIP 2 NaFlex in the cuda engine "
                               "(its calibration takes fixed-size pixels); use bfloat16, float16 or float32")
        # NaFlex: one fixed patch length, so that captured graphs see static shapes (the pipeline pads to it)
        self.num_patches = _patch_budget(max_num_patches or model.vision.cfg.num_patches) if naflex else None
        super().__init__(model, device, torch.float32)  # float32 on the device first: FP8 calibrates on it
        self.precision, self.dtype = precision, spec.compute
        vision = self.model.vision
        self.calibration: list[dict] = []
        if spec.fp8 and vision is not None:
            if calib is None:
                calib = synthetic_pixels(CALIB_IMAGES, vision.cfg.image_size)
            if not isinstance(calib, torch.Tensor):
                calib = torch.from_numpy(np.asarray(calib, np.float32))
            self.calibration = quantize_vision(vision, calib.float(), spec.fp8, out_dtype=spec.compute,
                                               backend=fp8_backend)
        cuda = self.device.type == "cuda"
        convert(self.model, spec, fuse_gelu=cuda and _fused_gelu_supported(self.device))
        self.graphs = cuda if graphs is None else bool(graphs)
        self.compile_mode = self._compile(compile if compile != "auto" else ("default" if cuda else None))
        self.runner = GraphRunner(self._vision_forward, graph_sizes, capture=cuda) if self.graphs else None
        self.chunk = max(graph_sizes)
        self._copy_stream = torch.cuda.Stream(self.device) if cuda else None
        self._pinned: list[torch.Tensor | None] = [None, None]  # double-buffered host staging
        self._uploaded: list[torch.cuda.Event | None] = [None, None]

    def _compile(self, mode: str | None | bool) -> str | None:
        """Compile each vision block (regional compilation: one compiled block serves all layers)."""
        self._eager_blocks = None
        if not mode or self.model.vision is None:
            return None
        if mode not in COMPILE_MODES:
            raise SigliteError(f"unknown compile mode {mode!r}; choose one of {', '.join(COMPILE_MODES)}")
        if mode == "reduce-overhead" and self.graphs:
            raise SigliteError("compile='reduce-overhead' captures its own CUDA graphs; pass graphs=False with it")
        _raise_recompile_limit()
        vision = self.model.vision
        self._eager_blocks = vision.blocks
        vision.blocks = nn.ModuleList(torch.compile(b, mode=COMPILE_MODES[mode]) for b in vision.blocks)
        return mode

    def _vision_forward(self, x: torch.Tensor, spatial_shapes: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
        try:
            return self.model.vision(x, spatial_shapes)
        except Exception as e:  # a compiler failure must not take the engine down; eager is always there
            if self._eager_blocks is None:
                raise
            warnings.warn(f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                          "running the vision tower eagerly", stacklevel=2)
            self.model.vision.blocks, self._eager_blocks, self.compile_mode = self._eager_blocks, None, None
            return self.model.vision(x, spatial_shapes)

    def describe(self) -> dict:
        """Engine settings, for reports."""
        return {"engine": self.name, "precision": self.precision, "device": str(self.device),
                "compile": self.compile_mode, "graphs": self.graphs,
                "graph_sizes": self.runner.sizes if self.runner else None,
                **({"num_patches": self.num_patches} if self.num_patches else {})}

    @torch.inference_mode()
    def warmup(self, batch_sizes: Sequence[int] | None = None) -> None:
        """Compile and capture for these batch sizes now, so the first real call does not pay for it."""
        cfg = self._tower("vision").cfg
        for b in batch_sizes or (self.runner.sizes if self.runner else (1,)):
            if self.num_patches:  # NaFlex: full-budget patches, 1x1 grids (capture does not depend on values)
                self.encode_image(torch.zeros(b, self.num_patches, cfg.num_channels * cfg.patch_size**2,
                                              device=self.device), spatial_shapes=np.ones((b, 2), np.int64))
            else:
                self.encode_image(torch.zeros(b, cfg.num_channels, cfg.image_size, cfg.image_size, device=self.device))

    @torch.inference_mode()
    def encode_image(self, pixels: np.ndarray | torch.Tensor, tokens: bool = False,
                     spatial_shapes: np.ndarray | torch.Tensor | None = None):
        """(N, 3, H, W) float32, numpy or a tensor (already on the GPU, e.g. from `preprocess.gpu.decode_batch_gpu`)
        -> pooler_output (N, D), last_hidden_state (N, T, D) if tokens (float32 numpy).

        NaFlex towers take (N, L, p*p*3) patches with L <= `num_patches` (padded up to it here) and their (N, 2)
        `spatial_shapes`; last_hidden_state then has `num_patches` tokens, those past rows*cols being padding."""
        vision = self._tower("vision")
        check_pooled(vision.head is not None, tokens)
        pixels, shapes = self._naflex_inputs(pixels, spatial_shapes)
        pooled, hidden, finite = [], [], []
        for k, x in enumerate(self._device_chunks(pixels)):
            args = (x,) if shapes is None else (x, shapes[k * self.chunk:k * self.chunk + len(x)])
            h, p = self.runner(*args) if self.runner is not None else self._vision_forward(*args)
            finite.append(torch.isfinite(p if p is not None else h).all())
            if p is not None:
                pooled.append(self._to_host(p))
            if tokens:
                hidden.append(self._to_host(h))
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # the host copies above were asynchronous
        if finite and not bool(torch.stack(finite).all()):
            warnings.warn(f"non-finite image features in {self.precision}: the model overflows this precision; "
                          "use dtype='bfloat16' or 'float32'", stacklevel=2)
        D = vision.cfg.hidden_size
        out_p = torch.cat(pooled).numpy() if pooled else \
            (np.zeros((0, vision.cfg.pooled_size), np.float32) if vision.head is not None else None)
        out_h = (torch.cat(hidden).numpy() if hidden else np.zeros((0, vision.cfg.num_tokens, D), np.float32)) \
            if tokens else None
        return out_p, out_h

    def _naflex_inputs(self, pixels, spatial_shapes):
        """NaFlex: patches padded to `num_patches` and the grids as a device tensor; fixed-size towers: as given."""
        if self.num_patches is None:
            if spatial_shapes is not None:
                raise SigliteError("spatial_shapes is for SigLIP 2 NaFlex towers; this one takes (N, 3, H, W) pixels")
            return pixels, None
        if spatial_shapes is None:
            raise SigliteError("a SigLIP 2 NaFlex tower needs spatial_shapes (N, 2) with its (N, L, p*p*3) patches")
        length = pixels.shape[1]
        if length > self.num_patches:
            raise SigliteError(f"{length} patches per image; this engine runs at max_num_patches={self.num_patches}")
        if length < self.num_patches:
            pad = (0, 0, 0, self.num_patches - length)
            pixels = F.pad(pixels, pad) if isinstance(pixels, torch.Tensor) else \
                np.pad(pixels, ((0, 0), (0, self.num_patches - length), (0, 0)))
        return pixels, torch.as_tensor(np.asarray(spatial_shapes) if not isinstance(spatial_shapes, torch.Tensor)
                                       else spatial_shapes, dtype=torch.int64).to(self.device)

    def _to_host(self, t: torch.Tensor) -> torch.Tensor:
        """Enqueue the copy of an output to (pinned) host memory on the current stream; valid after a synchronize."""
        t = t.float()
        if self.device.type != "cuda":
            return t.clone()  # static buffers of a GraphRunner are reused by the next chunk
        host = torch.empty(t.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(t, non_blocking=True)
        return host

    def _device_chunks(self, pixels):
        """Yield the input as device tensors of at most `self.chunk` rows; the copy of chunk k+1 runs on a side
        stream while chunk k computes, out of two pinned staging buffers."""
        if isinstance(pixels, torch.Tensor) and pixels.device.type == self.device.type:
            for a, b in chunks(len(pixels), self.chunk):
                yield pixels[a:b].to(self.device, torch.float32)
            return
        arr = np.ascontiguousarray(pixels.numpy() if isinstance(pixels, torch.Tensor) else pixels, dtype=np.float32)
        if self.device.type != "cuda":
            for a, b in chunks(len(arr), self.chunk):
                yield torch.from_numpy(arr[a:b])
            return
        compute = torch.cuda.current_stream(self.device)
        for k, (a, b) in enumerate(chunks(len(arr), self.chunk)):
            slot = k % 2
            staging = self._pinned[slot]
            if staging is None or staging.shape[1:] != arr.shape[1:]:
                staging = self._pinned[slot] = torch.empty((self.chunk, *arr.shape[1:]), pin_memory=True)
            if self._uploaded[slot] is not None:
                self._uploaded[slot].synchronize()  # the last upload out of this buffer has finished reading it
            host = staging[:b - a]
            host.copy_(torch.from_numpy(arr[a:b]))
            with torch.cuda.stream(self._copy_stream):
                dev = host.to(self.device, non_blocking=True)
                done = torch.cuda.Event()
                done.record(self._copy_stream)
            self._uploaded[slot] = done
            compute.wait_event(done)
            dev.record_stream(compute)  # allocated on the copy stream, used on the compute stream
            yield dev


def _engine_device(device) -> torch.device:
    if device is None:
        if not torch.cuda.is_available():
            raise SigliteError("engine 'cuda' needs a CUDA GPU and torch sees none; use engine='torch', or "
                               "device='cpu' for its CPU emulation")
        return torch.device("cuda")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SigliteError(f"device {device} asked for, but torch sees no CUDA GPU (CPU build of torch?)")
    return device


def _raise_recompile_limit(limit: int = 64) -> None:
    # Each precision, batch-size regime and model shape is one more compiled entry for the same Block.forward; the
    # default limit (8) would silently drop later engines of one process (e.g. a benchmark) back to eager.
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), limit))


def _patch_budget(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise SigliteError(f"max_num_patches must be a positive int, got {n!r}")
    return int(n)


def create(folder, *, device=None, dtype=None, allow_pickle: bool = False, **kw) -> CudaEngine:
    from ..checkpoints import load_model

    _, model = load_model(folder, allow_pickle=allow_pickle)
    if model.vision is not None and model.vision.cfg.variable_resolution and kw.get("max_num_patches") is None:
        from ..preprocess.naflex import load_image_config

        kw["max_num_patches"] = load_image_config(folder).max_num_patches  # the checkpoint's processor budget
    return CudaEngine(model, device=device, dtype=dtype, **kw)
