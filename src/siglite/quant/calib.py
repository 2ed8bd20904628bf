"""Calibration inputs for post-training quantization: images from any `siglite embed` source, texts from a file or a
built-in prompt set, split into a part that fits the recipe and a held-out part that measures it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

import torch

from ..errors import SigliteError
from ..preprocess import naflex
from ..preprocess.image import ImageConfig, preprocess_batch

log = logging.getLogger(__name__)

# Prompts for the text tower when no calibration texts are given: the zero-shot template on everyday nouns plus
# caption-like sentences, so padding lengths and token mixes vary as in use.
_NOUNS = ("cat", "dog", "car", "bicycle", "airplane", "bird", "horse", "ship", "truck", "person", "tree", "flower",
          "house", "bridge", "mountain", "beach", "city street", "kitchen", "laptop", "phone", "chair", "table",
          "pizza", "banana", "clock", "book", "guitar", "train", "bus", "boat", "cow", "sheep")
_SENTENCES = ("a close-up photo of a {} on a wooden table", "two {}s next to each other in bright sunlight",
              "a blurry picture of a {} at night", "an illustration of a red {}", "{}")
DEFAULT_TEXTS = tuple([f"This is a photo of {n}." for n in _NOUNS]
                      + [_SENTENCES[i % len(_SENTENCES)].format(n) for i, n in enumerate(_NOUNS)])


@dataclass
class VisionInputs:
    """Images as the vision tower takes them, so that whatever runs the tower (calibration, the fidelity probes, the
    runtime check) feeds fixed-size and NaFlex models alike: (N, 3, H, W) pixels, or NaFlex (N, L, p*p*3) patches,
    every image padded to the same L (the patch budget the graph is exported at) with its (N, 2) (rows, cols) grid.

    Padded patches run through the tower as in the exported graph (so the per-tensor activation ranges that
    calibration and the INT8 simulation see include them, as the runtime's do), are masked as attention keys, and
    are zeroed by `real_tokens` before any comparison (their outputs mean nothing)."""

    pixels: np.ndarray | torch.Tensor
    spatial_shapes: np.ndarray | torch.Tensor | None = None  # NaFlex only

    @classmethod
    def of(cls, x) -> VisionInputs | None:
        """None, a `VisionInputs`, or a plain pixel array / tensor (a fixed-size model's)."""
        return x if x is None or isinstance(x, VisionInputs) else cls(x)

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: slice) -> VisionInputs:
        return VisionInputs(self.pixels[index], None if self.spatial_shapes is None else self.spatial_shapes[index])

    def batches(self, size: int) -> Iterator[VisionInputs]:
        """Consecutive batches of at most `size` images, as torch tensors."""
        as_t = (lambda a: a if a is None or isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a)))
        for i in range(0, len(self), size):
            part = self[i:i + size]
            yield VisionInputs(as_t(part.pixels), as_t(part.spatial_shapes))

    def forward(self, tower):
        """`tower(inputs)` -> (last_hidden_state (B, T, D), pooled (B, P) or None)."""
        return tower(self.pixels, self.spatial_shapes) if self.spatial_shapes is not None else tower(self.pixels)

    def embed(self, tower):
        """The tokens entering block 0 (B, T, D) and the key mask every block takes (None for fixed-size models)."""
        x = tower.embed(self.pixels, self.spatial_shapes)
        return x, tower.key_mask(x, self.spatial_shapes)

    def real_tokens(self, hidden):
        """(B, T, D) tokens with NaFlex padding zeroed (numpy or torch): a per-image cosine over the flattened tokens
        then counts each image's own rows*cols tokens only."""
        if self.spatial_shapes is None:
            return hidden
        shapes = np.asarray(self.spatial_shapes)
        keep = np.arange(hidden.shape[1])[None, :] < (shapes[:, 0] * shapes[:, 1])[:, None]  # (B, T)
        if isinstance(hidden, np.ndarray):
            return hidden * keep[..., None]
        return hidden * torch.from_numpy(keep).to(hidden.device)[..., None]


@dataclass
class Calibration:
    """Preprocessed calibration data: `fit` sets the recipe, `check` (held out) measures fidelity."""

    fit_pixels: np.ndarray | None  # (N, 3, H, W) float32; NaFlex: (N, L, p*p*3) patches padded to the budget L
    check_pixels: np.ndarray | None
    fit_texts: list[str]
    check_texts: list[str]
    failures: list[str]  # one-line reasons for skipped images
    fit_shapes: np.ndarray | None = None  # NaFlex: (N, 2) int64 (rows, cols) of fit_pixels
    check_shapes: np.ndarray | None = None
    max_num_patches: int | None = None  # NaFlex: the patch budget L

    @property
    def fit_images(self) -> VisionInputs | None:
        return None if self.fit_pixels is None else VisionInputs(self.fit_pixels, self.fit_shapes)

    @property
    def check_images(self) -> VisionInputs | None:
        return None if self.check_pixels is None else VisionInputs(self.check_pixels, self.check_shapes)

    def describe(self) -> dict:
        n = (lambda a: 0 if a is None else len(a))
        out = {"fit_images": n(self.fit_pixels), "check_images": n(self.check_pixels),
               "fit_texts": len(self.fit_texts), "check_texts": len(self.check_texts),
               "skipped_images": len(self.failures)}
        if self.max_num_patches is not None:
            out["max_num_patches"] = self.max_num_patches
        return out


def read_images(spec, limit: int) -> list:
    """Up to `limit` images from a folder, glob, list file, tar shards or parquet (see `siglite embed`), spread
    evenly over the source so that a sorted folder of classes is sampled across classes."""
    from ..data.sources import open_source

    if isinstance(spec, (list, tuple)):
        items = list(spec)
        pick = _spread(len(items), limit)
        return [items[i] for i in pick]
    source = open_source(spec)
    items = source.items()
    if not items:
        raise SigliteError(f"{spec}: no calibration images found")
    return [source.load(items[i]) for i in _spread(len(items), limit)]


def read_texts(spec: str | None, limit: int) -> list[str]:
    """Calibration texts: one per non-blank line of `spec`, or the built-in prompts."""
    if spec is None:
        texts = list(DEFAULT_TEXTS)
    else:
        from ..data.sources import open_source

        source = open_source(spec, text=True)
        texts = [source.load(item) for item in source.items()]
        if not texts:
            raise SigliteError(f"{spec}: no calibration texts (the file has no non-blank line)")
    return [texts[i] for i in _spread(len(texts), limit)]


def _spread(n: int, limit: int) -> list[int]:
    if limit >= n:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, limit).round()})


def prepare(images, image_config: ImageConfig | naflex.NaflexConfig | None, *, num_images: int, num_check: int,
            texts: str | None = None, num_texts: int = 64, preprocess: str = "resize",
            max_num_patches: int | None = None) -> Calibration:
    """Read and preprocess calibration images (undecodable ones are skipped and logged) and texts, holding out the
    last `num_check` of each for measuring.

    A `NaflexConfig` (SigLIP 2 NaFlex) cuts each image into patches at its native aspect ratio with at most
    `max_num_patches` patches (default the config's) and pads every image to that many, as the exported graph runs."""
    fit_px = check_px = fit_shapes = check_shapes = budget = None
    failures: list[str] = []
    if image_config is not None:
        if images is None:
            raise SigliteError("quantizing a vision tower needs calibration images (--calib)")
        srcs = read_images(images, num_images + num_check)
        shapes = None
        if isinstance(image_config, naflex.NaflexConfig):
            if preprocess != "resize":
                raise SigliteError(f"NaFlex models keep the aspect ratio; preprocess {preprocess!r} does not apply "
                                   "(use resize)")
            budget = image_config.max_num_patches if max_num_patches is None else max_num_patches
            batch, ok, failed = naflex.preprocess_batch(srcs, image_config, max_num_patches=budget, pad_to=budget,
                                                        on_error="skip")
            pixels, shapes = batch.patches, batch.spatial_shapes
        else:
            if max_num_patches is not None:
                raise SigliteError("max_num_patches applies to NaFlex (siglip2) models only")
            pixels, ok, failed = preprocess_batch(srcs, image_config, preprocess, on_error="skip")
        for _, reason in failed:
            log.warning("calibration: skipped %s", reason)
        failures = [reason for _, reason in failed]
        if len(ok) < 2:
            raise SigliteError(f"{images}: need at least 2 decodable calibration images, got {len(ok)}")
        held = min(num_check, len(ok) // 2)
        fit_px, check_px = pixels[:len(ok) - held], pixels[len(ok) - held:]
        if shapes is not None:
            fit_shapes, check_shapes = shapes[:len(ok) - held], shapes[len(ok) - held:]
    all_texts = read_texts(texts, num_texts + num_check)
    held = min(num_check, len(all_texts) // 2)
    return Calibration(fit_px, check_px, all_texts[:len(all_texts) - held], all_texts[len(all_texts) - held:],
                       failures, fit_shapes, check_shapes, budget)
