"""Calibration inputs for post-training quantization: images from any `siglite embed` source, texts from a file or a
built-in prompt set, split into a part that fits the recipe and a held-out part that measures it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..errors import SigliteError
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
class Calibration:
    """Preprocessed calibration data: `fit` sets the recipe, `check` (held out) measures fidelity."""

    fit_pixels: np.ndarray | None  # (N, 3, H, W) float32
    check_pixels: np.ndarray | None
    fit_texts: list[str]
    check_texts: list[str]
    failures: list[str]  # one-line reasons for skipped images

    def describe(self) -> dict:
        n = (lambda a: 0 if a is None else len(a))
        return {"fit_images": n(self.fit_pixels), "check_images": n(self.check_pixels),
                "fit_texts": len(self.fit_texts), "check_texts": len(self.check_texts),
                "skipped_images": len(self.failures)}


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


def prepare(images, image_config: ImageConfig | None, *, num_images: int, num_check: int, texts: str | None = None,
            num_texts: int = 64, preprocess: str = "resize") -> Calibration:
    """Read and preprocess calibration images (undecodable ones are skipped and logged) and texts, holding out the
    last `num_check` of each for measuring."""
    fit_px = check_px = None
    failures: list[str] = []
    if image_config is not None:
        if images is None:
            raise SigliteError("quantizing a vision tower needs calibration images (--calib)")
        srcs = read_images(images, num_images + num_check)
        pixels, ok, failed = preprocess_batch(srcs, image_config, preprocess, on_error="skip")
        for _, reason in failed:
            log.warning("calibration: skipped %s", reason)
        failures = [reason for _, reason in failed]
        if len(ok) < 2:
            raise SigliteError(f"{images}: need at least 2 decodable calibration images, got {len(ok)}")
        held = min(num_check, len(ok) // 2)
        fit_px, check_px = pixels[:len(ok) - held], pixels[len(ok) - held:]
    all_texts = read_texts(texts, num_texts + num_check)
    held = min(num_check, len(all_texts) // 2)
    return Calibration(fit_px, check_px, all_texts[:len(all_texts) - held], all_texts[len(all_texts) - held:],
                       failures)
