"""SigLIP 2 NaFlex image preprocessing: native aspect ratio, a variable number of patches.

A port of transformers' ``Siglip2ImageProcessorPil`` (transformers 5.24,
``transformers/models/siglip2/image_processing_pil_siglip2.py``: ``get_image_size_for_max_num_patches``,
``convert_image_to_patches``, ``pad_along_first_dim``, ``_preprocess``) on top of the PIL resize and the
rescale/normalize of `siglite.preprocess.image` (the same ``PilBackend`` steps the SigLIP processor uses):

1. resize, keeping the aspect ratio, to the largest size whose sides are multiples of the patch size and that has at
   most ``max_num_patches`` patches (a binary search on the scale, as transformers does), with the checkpoint's
   resample filter;
2. rescale and normalize;
3. cut into ``(rows * cols, p * p * 3)`` patches, each flattened channel-last (row, column, channel);
4. pad a batch to one length with zero patches; ``mask`` marks the real ones and ``spatial_shapes`` holds each
   image's ``(rows, cols)``.

transformers pads every image to ``max_num_patches``; siglite pads a batch to its longest image by default, which
gives the same features because padded patches are masked in the model (``pad_to`` pads to a fixed length, as
exported graphs need).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image

from siglite.errors import ImageError, LoadError

from .image import (_WHITE, MAX_PIXELS_DEFAULT, ImageConfig, ImageInput, _check_rgb, _error, check_image_config,
                    _rescale_normalize, decode, source_name)

DEFAULT_MAX_NUM_PATCHES = 256  # Siglip2ImageProcessor.max_num_patches
EVAL_MAX_NUM_PATCHES = (256, 576, 784, 1024)  # the budgets the NaFlex checkpoints were evaluated at (SigLIP 2 paper)


@dataclass(frozen=True)
class NaflexConfig:
    """How to turn an RGB image into NaFlex patches; mirrors a ``Siglip2ImageProcessor`` config.

    Attributes:
        patch_size: Patch side in pixels (the model's).
        max_num_patches: Default patch budget per image (a call may choose another).
        resample: PIL resample code (2 = bilinear, the checkpoints' choice).
        do_resize: Whether to resize at all; if not, the image sides must already be multiples of the patch size.
        do_rescale: Whether to multiply pixel values by ``rescale_factor``.
        rescale_factor: Factor applied when ``do_rescale``.
        do_normalize: Whether to apply ``(x - image_mean) / image_std`` per channel.
        image_mean: Per-channel mean (R, G, B).
        image_std: Per-channel standard deviation (R, G, B).
    """

    patch_size: int = 16
    max_num_patches: int = DEFAULT_MAX_NUM_PATCHES
    resample: int = 2
    do_resize: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple = (0.5, 0.5, 0.5)
    image_std: tuple = (0.5, 0.5, 0.5)

    kind = "naflex"  # what `siglite info` / sidecars show; not a dataclass field

    def __post_init__(self) -> None:
        check_image_config(self, ("patch_size", "max_num_patches"))

    @classmethod
    def from_hf(cls, d: dict) -> NaflexConfig:
        """From a ``Siglip2ImageProcessor`` config dict; missing keys take transformers' class defaults."""
        kwargs = {}
        for field in dataclasses.fields(cls):
            value = d.get(field.name)
            if value is None:
                continue
            if field.name in ("image_mean", "image_std") and isinstance(value, (int, float)):
                value = (value,) * 3
            kwargs[field.name] = value
        try:
            return cls(**kwargs)
        except ValueError as exc:
            raise LoadError(f"preprocessor config: {exc}") from None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["image_mean"], d["image_std"] = list(self.image_mean), list(self.image_std)
        return {"kind": self.kind, **d}

    @classmethod
    def from_dict(cls, d: dict) -> NaflexConfig:
        """Inverse of `to_dict`."""
        d = {k: v for k, v in d.items() if k != "kind"}
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"NaflexConfig.from_dict: unknown keys {unknown}")
        return cls(**d)


def is_naflex_processor(d: dict) -> bool:
    """Whether an image-processor config dict is a NaFlex (Siglip2ImageProcessor) one."""
    kind = str(d.get("image_processor_type") or "")
    return kind.startswith("Siglip2ImageProcessor") or "max_num_patches" in d


def image_config_from_hf(d: dict) -> ImageConfig | NaflexConfig:
    """An image-processor config dict -> `NaflexConfig` for a Siglip2ImageProcessor, else `ImageConfig`."""
    return NaflexConfig.from_hf(d) if is_naflex_processor(d) else ImageConfig.from_hf(d)


def load_image_config(folder: Path) -> ImageConfig | NaflexConfig:
    """A checkpoint folder's image preprocessing, whatever its layout (`checkpoints.layout.read_image_processor`)."""
    from ..checkpoints.layout import read_image_processor

    return image_config_from_hf(read_image_processor(Path(folder)))


# --------------------------------------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------------------------------------


def target_size(height: int, width: int, patch_size: int, max_num_patches: int, eps: float = 1e-5) -> tuple[int, int]:
    """The resize target: sides multiples of `patch_size` (at least one patch), aspect ratio kept, at most
    `max_num_patches` patches. The same binary search on the scale as transformers'
    ``get_image_size_for_max_num_patches`` (so the same float steps and the same answer)."""

    def scaled(scale: float, size: int) -> int:
        return max(patch_size, math.ceil(size * scale / patch_size) * patch_size)

    lo, hi = eps / 10, 100.0
    while hi - lo >= eps:
        scale = (lo + hi) / 2
        if (scaled(scale, height) / patch_size) * (scaled(scale, width) / patch_size) <= max_num_patches:
            lo = scale
        else:
            hi = scale
    return scaled(lo, height), scaled(lo, width)


def patchify(hwc: np.ndarray, patch_size: int) -> np.ndarray:
    """(H, W, C) with H, W multiples of p -> (H/p * W/p, p * p * C): patches row-major, each flattened channel-last
    (transformers' ``convert_image_to_patches``)."""
    H, W, C = hwc.shape
    rows, cols = H // patch_size, W // patch_size
    x = hwc.reshape(rows, patch_size, cols, patch_size, C).transpose(0, 2, 1, 3, 4)  # (rows, cols, p, p, C)
    return np.ascontiguousarray(x.reshape(rows * cols, patch_size * patch_size * C))


def preprocess(image: np.ndarray, cfg: NaflexConfig, max_num_patches: int | None = None
               ) -> tuple[np.ndarray, tuple[int, int]]:
    """One decoded image -> its patches ``(rows * cols, p * p * 3)`` float32 and ``(rows, cols)``, unpadded.

    Args:
        image: ``(H, W, 3)`` uint8 RGB, e.g. from `decode`.
        cfg: Patch size, resample filter and normalization.
        max_num_patches: The patch budget; default ``cfg.max_num_patches``.
    """
    rgb = _check_rgb(image)
    p = cfg.patch_size
    budget = _check_budget(cfg.max_num_patches if max_num_patches is None else max_num_patches)
    if cfg.do_resize:
        height, width = target_size(rgb.shape[0], rgb.shape[1], p, budget)
        rgb = np.asarray(PIL.Image.fromarray(rgb, mode="RGB").resize((width, height), resample=cfg.resample))
    elif rgb.shape[0] % p or rgb.shape[1] % p or (rgb.shape[0] // p) * (rgb.shape[1] // p) > budget:
        raise _error(source_name(image), f"image is {rgb.shape[1]}x{rgb.shape[0]}; do_resize=False needs sides that "
                                         f"are multiples of {p} and at most {budget} patches")
    patches = patchify(_rescale_normalize(rgb, cfg), p)
    return patches, (rgb.shape[0] // p, rgb.shape[1] // p)


def _check_budget(max_num_patches) -> int:
    if isinstance(max_num_patches, bool) or not isinstance(max_num_patches, int) or max_num_patches < 1:
        raise ValueError(f"max_num_patches must be a positive int, got {max_num_patches!r}")
    return max_num_patches


# --------------------------------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class PatchBatch:
    """Padded NaFlex model inputs (transformers' ``pixel_values``, ``pixel_attention_mask``, ``spatial_shapes``)."""

    patches: np.ndarray  # (B, L, p * p * 3) float32, zero rows after each image's own patches
    mask: np.ndarray  # (B, L) int32, 1 = real patch
    spatial_shapes: np.ndarray  # (B, 2) int64 (rows, cols)

    @property
    def lengths(self) -> list[int]:
        """Real patches (= output tokens) per image."""
        return [int(r * c) for r, c in self.spatial_shapes]


def pad(items: Sequence[tuple[np.ndarray, tuple[int, int]]], dim: int, pad_to: int | None = None) -> PatchBatch:
    """Stack `preprocess` outputs, padding with zero patches to the longest (or to `pad_to`)."""
    length = max((len(x) for x, _ in items), default=0) if pad_to is None else pad_to
    patches = np.zeros((len(items), length, dim), np.float32)
    mask = np.zeros((len(items), length), np.int32)
    for i, (x, _) in enumerate(items):
        if len(x) > length:
            raise ValueError(f"image {i} has {len(x)} patches, more than pad_to={length}")
        patches[i, :len(x)] = x
        mask[i, :len(x)] = 1
    shapes = np.array([s for _, s in items], np.int64).reshape(len(items), 2)
    return PatchBatch(patches, mask, shapes)


def preprocess_batch(
    images: Sequence[ImageInput],
    cfg: NaflexConfig,
    *,
    max_num_patches: int | None = None,
    pad_to: int | None = None,
    on_error: str = "raise",
    max_pixels: int | None = MAX_PIXELS_DEFAULT,
    background: tuple = _WHITE,
) -> tuple[PatchBatch, list[int], list[tuple[int, str]]]:
    """Decode and patchify a batch, as `siglite.preprocess.image.preprocess_batch` does for fixed-size models.

    Args:
        images: Inputs accepted by `decode`.
        cfg: Patch size, resample filter and normalization.
        max_num_patches: Patch budget per image; default ``cfg.max_num_patches``.
        pad_to: Pad to this many patches (default: the batch's longest image); must be >= the budget's patches.
        on_error: "raise" raises the first `ImageError`; "skip" records failures and keeps the rest.
        max_pixels: Passed to `decode`.
        background: Passed to `decode`.

    Returns:
        ``(batch, ok_indices, failures)`` like `siglite.preprocess.image.preprocess_batch`.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"unknown on_error {on_error!r}; valid values: raise, skip")
    items, ok, failures = [], [], []
    for index, src in enumerate(images):
        try:
            items.append(preprocess(decode(src, max_pixels=max_pixels, background=background), cfg, max_num_patches))
        except ImageError as exc:
            if on_error == "raise":
                raise
            failures.append((index, str(exc)))
            continue
        ok.append(index)
    return pad(items, cfg.patch_size**2 * 3, pad_to), ok, failures
