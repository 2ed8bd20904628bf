"""Image decode and preprocessing on the GPU: JPEG through nvJPEG (torchvision), resize and letterbox as torch ops.

The GPU counterpart of `siglite.preprocess.image` for the embedding and benchmark paths (``--decode gpu``): the same
`ImageConfig`, the same return value as `preprocess_batch`, and the same errors; where torchvision or CUDA is missing
everything runs on the CPU (one warning says so). How the GPU resize differs from PIL's is measured in
tests/test_cuda_engine.py (a few pixels by one level of 255).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ImageError
from .image import MAX_PIXELS_DEFAULT, _check_pixels, decode, letterbox_geometry, preprocess_batch, source_name

# PIL resample code -> torch interpolation; PIL's own filters for the others (LANCZOS, BOX, HAMMING) run on the CPU.
TORCH_RESAMPLE = {0: "nearest-exact", 2: "bilinear", 3: "bicubic"}
_JPEG_MAGIC = b"\xff\xd8"
_EXIF_ORIENTATION = 0x0112


@cache
def _torchvision():
    try:
        import torchvision.io
    except ImportError:
        warnings.warn("torchvision is not installed: images are decoded on the CPU "
                      "(pip install torchvision for nvJPEG decoding on the GPU)", stacklevel=3)
        return None
    return torchvision


def preprocess_tensor(image: torch.Tensor, cfg, mode: str = "resize") -> torch.Tensor:
    """(3, h, w) uint8 RGB tensor on any device -> (3, H, W) float32 pixels on the same device.

    The torch counterpart of `siglite.preprocess.image.resize` / `letterbox`. Differences from the CPU path (measured
    in tests/test_cuda_engine.py): "resize" uses torch's antialiased bilinear/bicubic, the same filters as PIL, in
    PIL's order (two passes, rounded to uint8 in between) but in floating point where PIL uses fixed point, so a few
    pixels differ by one level of 255; "letterbox" shrinks with the box-filter weights of cv2.INTER_AREA (as two
    small matrix products; float rounding makes rare one-level differences) and enlarges small images with cv2
    itself, on the CPU.
    """
    x = image.float()[None]  # (1, 3, h, w)
    if mode == "resize":
        if cfg.do_resize:
            x = _interpolate(x, (cfg.height, cfg.width), cfg.resample)
    elif mode == "letterbox":
        new_h, new_w, top, left = letterbox_geometry(x.shape[2], x.shape[3], cfg)
        if new_h <= x.shape[2] and new_w <= x.shape[3]:
            x = _area_shrink(x, new_h, new_w)
        else:  # enlarging a small image: cv2's INTER_AREA does its own bilinear variant; use cv2 itself
            import cv2

            hwc = image.permute(1, 2, 0).cpu().numpy()
            x = torch.from_numpy(cv2.resize(hwc, (new_w, new_h), interpolation=cv2.INTER_AREA)).to(image.device)
            x = x.permute(2, 0, 1)[None].float()
        pad = (left, cfg.width - new_w - left, top, cfg.height - new_h - top)
        x = F.pad(x, pad, value=127.0)  # the seed's grey border
    else:
        raise ValueError(f"unknown preprocessing mode {mode!r}; valid modes: letterbox, resize")
    x = x[0]
    if cfg.do_rescale:
        x = x * cfg.rescale_factor
    if cfg.do_normalize:
        mean = torch.tensor(cfg.image_mean, dtype=x.dtype, device=x.device)[:, None, None]
        std = torch.tensor(cfg.image_std, dtype=x.dtype, device=x.device)[:, None, None]
        x = (x - mean) / std
    return x


def _area_weights(n_in: int, n_out: int, device) -> torch.Tensor:
    """(n_out, n_in) box-filter weights: the fraction of output cell i = [i*s, (i+1)*s) (s = n_in / n_out) that input
    pixel j = [j, j+1) covers, as cv2.INTER_AREA computes them when shrinking."""
    s = n_in / n_out
    lo = torch.arange(n_out, dtype=torch.float64)[:, None] * s
    j = torch.arange(n_in, dtype=torch.float64)[None, :]
    overlap = (torch.minimum(lo + s, j + 1) - torch.maximum(lo, j)).clamp_min(0)
    return (overlap / s).float().to(device)


def _area_shrink(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(1, C, H, W) -> (1, C, h, w) area averaging, rounded to uint8 levels; two small GEMMs on the GPU."""
    y = _area_weights(x.shape[2], h, x.device) @ x @ _area_weights(x.shape[3], w, x.device).t()
    return y.round().clamp(0, 255)


def _interpolate(x: torch.Tensor, size: tuple[int, int], resample: int) -> torch.Tensor:
    """Resize like PIL.Image.resize (output rounded to uint8 levels, as PIL returns uint8)."""
    mode = TORCH_RESAMPLE.get(resample)
    if mode is None:
        import PIL.Image

        hwc = x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        out = np.asarray(PIL.Image.fromarray(hwc).resize(size[::-1], resample=resample))
        return torch.from_numpy(out.copy()).to(x.device).permute(2, 0, 1)[None].float()
    if mode == "nearest-exact":
        return F.interpolate(x, size=size, mode=mode)
    # Two one-axis passes, each rounded to uint8 levels as PIL stores them (bicubic overshoot is clipped in between),
    # in PIL's order: the pass giving the smaller intermediate image first, horizontal on a tie (matched against
    # Pillow 13 in tests/test_cuda_engine.py; the other order differs by up to ~15 levels at sharp edges).
    h, w = x.shape[2:]
    first = (h, size[1]) if h * size[1] <= size[0] * w else (size[0], w)
    y = F.interpolate(x, size=first, mode=mode, align_corners=False, antialias=True).round().clamp(0, 255)
    return F.interpolate(y, size=size, mode=mode, align_corners=False, antialias=True).round().clamp(0, 255)


def _read_bytes(src) -> bytes | None:
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src)
    if isinstance(src, (str,)) or hasattr(src, "__fspath__"):
        try:
            with open(src, "rb") as f:
                return f.read()
        except OSError:
            return None  # the CPU decoder reports it with its usual message
    return None


def _jpeg_header(data: bytes, source: str, max_pixels: int | None) -> int:
    """Check the pixel limit from the header (no pixel data decoded) and return the EXIF orientation (1 = none)."""
    import PIL.Image

    with PIL.Image.open(io.BytesIO(data)) as img:
        _check_pixels(source, img.width, img.height, max_pixels)
        return int(img.getexif().get(_EXIF_ORIENTATION, 1) or 1)


def _orient(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation to a (3, h, w) tensor, as PIL.ImageOps.exif_transpose does."""
    ops = {2: lambda t: t.flip(-1), 3: lambda t: t.flip(-1, -2), 4: lambda t: t.flip(-2),
           5: lambda t: t.transpose(-1, -2), 6: lambda t: t.transpose(-1, -2).flip(-1),
           7: lambda t: t.transpose(-1, -2).flip(-1, -2), 8: lambda t: t.transpose(-1, -2).flip(-2)}
    return ops[orientation](img).contiguous() if orientation in ops else img


def decode_batch_gpu(images: Sequence, cfg, mode: str = "resize", *, device: str | torch.device = "cuda",
                     on_error: str = "raise", max_pixels: int | None = None):
    """Decode and preprocess images on the GPU: JPEG bytes (or paths) through nvJPEG, resize/letterbox on the GPU.

    The GPU counterpart of `siglite.preprocess.image.preprocess_batch`, with the same return value, for the embed and
    bench paths. Non-JPEG inputs, and JPEGs nvJPEG rejects, are decoded on the CPU by `decode` (same errors, same
    messages) and preprocessed on the GPU. Without torchvision or without CUDA everything runs on the CPU (one warning
    says so) and the pixels are moved to `device`. See `preprocess_tensor` for how the GPU resize differs from PIL's.

    Args:
        images: bytes, paths, or anything `siglite.preprocess.image.decode` accepts.
        cfg: the model's `ImageConfig`.
        mode: "resize" or "letterbox".
        device: where the pixels end up.
        on_error: "raise" the first `ImageError`, or "skip" bad images and list them.
        max_pixels: pixel limit (default: `preprocess.image.MAX_PIXELS_DEFAULT`).

    Returns:
        (pixels (N_ok, 3, H, W) float32 on `device`, ok indices, [(index, reason)] failures).
    """
    max_pixels = MAX_PIXELS_DEFAULT if max_pixels is None else max_pixels
    if on_error not in ("raise", "skip"):
        raise ValueError(f"unknown on_error {on_error!r}; valid values: raise, skip")
    device = torch.device(device)
    tv = _torchvision() if device.type == "cuda" else None
    if tv is None or not torch.cuda.is_available():
        pixels, ok, failures = preprocess_batch(images, cfg, mode, on_error=on_error, max_pixels=max_pixels)
        return torch.from_numpy(pixels).to(device), ok, failures

    decoded: dict[int, torch.Tensor] = {}  # index -> (3, h, w) uint8 on the GPU
    jpegs: list[tuple[int, bytes, int]] = []  # (index, data, EXIF orientation)
    failures: list[tuple[int, str]] = []

    def cpu_decode(i: int, src) -> None:
        try:
            decoded[i] = torch.from_numpy(decode(src, max_pixels=max_pixels)).permute(2, 0, 1).to(device)
        except ImageError as e:
            if on_error == "raise":
                raise
            failures.append((i, str(e)))

    for i, src in enumerate(images):
        data = _read_bytes(src)
        if data is None or not data.startswith(_JPEG_MAGIC):
            cpu_decode(i, src)
            continue
        try:
            jpegs.append((i, data, _jpeg_header(data, source_name(src), max_pixels)))
        except ImageError as e:
            if on_error == "raise":
                raise
            failures.append((i, str(e)))
        except Exception:  # noqa: BLE001 -- an unreadable header: the CPU decoder words the error
            cpu_decode(i, src)
    if jpegs:
        tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for _, d, _ in jpegs]
        try:
            out = tv.io.decode_jpeg(tensors, mode=tv.io.ImageReadMode.RGB, device=device)
        except (RuntimeError, TypeError):  # one bad file fails the batch (or no list API): decode one by one
            out = []
            for t in tensors:
                try:
                    out.append(tv.io.decode_jpeg(t, mode=tv.io.ImageReadMode.RGB, device=device))
                except RuntimeError:
                    out.append(None)
        for (i, _, orientation), img in zip(jpegs, out):
            if img is None:
                cpu_decode(i, images[i])
            else:
                decoded[i] = _orient(img, orientation)
    pixels, ok = [], []
    for i in sorted(decoded):
        chw = preprocess_tensor(decoded[i], cfg, mode)
        if chw.shape != (3, cfg.height, cfg.width):  # only with do_resize=False
            reason = ImageError(source_name(images[i]), f"image is {chw.shape[2]}x{chw.shape[1]} but do_resize=False "
                                                        f"needs exactly {cfg.width}x{cfg.height}")
            if on_error == "raise":
                raise reason
            failures.append((i, str(reason)))
            continue
        pixels.append(chw)
        ok.append(i)
    failures.sort()
    batch = torch.stack(pixels) if pixels else torch.empty((0, 3, cfg.height, cfg.width), device=device)
    return batch, ok, failures
