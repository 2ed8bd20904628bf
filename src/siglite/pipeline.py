"""`Model`: a loaded SigLIP checkpoint behind one API, whatever engine runs it.

Images and texts go in as Python objects; preprocessing follows the checkpoint's own settings; numpy comes out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from .engines.base import Engine
from .errors import SigliteError
from .model import sigmoid_logits
from .preprocess import naflex
from .preprocess.image import MAX_PIXELS_DEFAULT, ImageConfig, ImageInput, preprocess_batch

if TYPE_CHECKING:
    from .preprocess.text import TextTokenizer

DEFAULT_TEMPLATE = "This is a photo of {}."
DEFAULT_BATCH = 32
TOWER_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                "patch_size", "vocab_size", "max_position_embeddings", "projection_size", "num_patches")


@dataclass
class ImageBatch:
    """Result of `Model.encode_images`: rows for the inputs that decoded, and why the others did not."""

    features: np.ndarray  # (N_ok, D)
    tokens: np.ndarray | list[np.ndarray] | None  # (N_ok, T, D) when asked for; NaFlex: N_ok arrays (T_i, D)
    indices: list[int]  # input index of each row
    failures: list[tuple[int, str]] = field(default_factory=list)  # (input index, one-line reason)


class Model:
    """A SigLIP checkpoint ready to embed images and texts and to classify."""

    def __init__(self, engine: Engine, image_config: ImageConfig | naflex.NaflexConfig | None,
                 tokenizer: TextTokenizer | None, *, name: str = "", folder: Path | None = None,
                 config: dict | None = None):
        self.engine = engine
        self.image_config = image_config
        self.tokenizer = tokenizer
        self.name = name
        self.folder = folder
        self.config = config or {}
        self.max_pixels: int | None = MAX_PIXELS_DEFAULT
        self.background = (255, 255, 255)  # RGBA/LA inputs are composited on white, as transformers does

    def __repr__(self) -> str:
        return f"Model({self.name!r}, engine={self.engine.name}, precision={self.engine.precision})"

    def describe(self) -> dict:
        """What this model is: towers, preprocessing, tokenizer, engine (for `siglite info` and sidecars)."""
        towers = {k: {f: v[f] for f in TOWER_FIELDS if f in v} for k in ("vision_config", "text_config")
                  if isinstance(v := self.config.get(k), dict)}
        return {
            "name": self.name, "folder": str(self.folder), "engine": self.engine.name,
            "precision": self.engine.precision, "model_type": self.config.get("model_type"), **towers,
            "image": self.image_config.to_dict() if self.image_config else None,
            "tokenizer": self.tokenizer.settings() if self.tokenizer else None,
            "logit_scale": self.engine.logit_scale, "logit_bias": self.engine.logit_bias,
        }

    # -- images ---------------------------------------------------------------------------------------------------

    def encode_images(self, images: Sequence[ImageInput], *, preprocess: str = "resize", tokens: bool = False,
                      batch_size: int | None = None, on_error: str = "skip",
                      max_num_patches: int | None = None) -> ImageBatch:
        """Embed images, keeping going past inputs that cannot be decoded when on_error="skip".

        max_num_patches: NaFlex models only: the patch budget per image (default the checkpoint's, 256).
        """
        if self.image_config is None:
            raise SigliteError(f"{self.name}: this checkpoint has no image preprocessing config (text-only model?)")
        patches = isinstance(self.image_config, naflex.NaflexConfig)
        if max_num_patches is not None and not patches:
            raise SigliteError(f"{self.name}: max_num_patches applies to NaFlex (siglip2) models only")
        if patches and preprocess != "resize":
            raise SigliteError(f"{self.name}: NaFlex models keep the aspect ratio; preprocess={preprocess!r} does not "
                               "apply (use 'resize')")
        images = _as_list(images)
        batch_size = batch_size or DEFAULT_BATCH
        feats, toks, indices, failures = [], [], [], []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            if patches:
                pooled, hidden, ok, failed = self._encode_patches(chunk, tokens, on_error, max_num_patches)
            else:
                pixels, ok, failed = preprocess_batch(chunk, self.image_config, preprocess, on_error=on_error,
                                                      max_pixels=self.max_pixels, background=self.background)
                pooled, hidden = self.engine.encode_image(pixels, tokens=tokens) if ok else (None, None)
            failures += [(start + i, reason) for i, reason in failed]
            if not ok:
                continue
            indices += [start + i for i in ok]
            if pooled is not None:
                feats.append(pooled)
            if hidden is not None:
                toks.append(hidden)
        if patches:
            tokens_out = [t for batch in toks for t in batch] if tokens else None
        else:
            tokens_out = np.concatenate(toks) if toks else None
        return ImageBatch(
            features=np.concatenate(feats) if feats else np.zeros((0, 0), np.float32),
            tokens=tokens_out,
            indices=indices,
            failures=failures,
        )

    def _encode_patches(self, chunk: list, tokens: bool, on_error: str, max_num_patches: int | None):
        """NaFlex: one batch padded to its longest image (or to the engine's fixed length); tokens cut back to each
        image's own rows*cols."""
        pad_to = getattr(self.engine, "num_patches", None)  # exported graphs run at one fixed patch budget
        budget = max_num_patches if max_num_patches is not None else pad_to or self.image_config.max_num_patches
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise SigliteError(f"max_num_patches must be a positive int, got {budget!r}")
        if pad_to is not None and budget > pad_to:
            raise SigliteError(f"{self.name}: this engine was exported for max_num_patches={pad_to}; "
                               f"{budget} does not fit")
        batch, ok, failed = naflex.preprocess_batch(chunk, self.image_config, max_num_patches=budget, pad_to=pad_to,
                                                    on_error=on_error, max_pixels=self.max_pixels,
                                                    background=self.background)
        if not ok:
            return None, None, ok, failed
        pooled, hidden = self.engine.encode_image(batch.patches, tokens=tokens, spatial_shapes=batch.spatial_shapes)
        if hidden is not None:
            hidden = [h[:n] for h, n in zip(hidden, batch.lengths)]
        return pooled, hidden, ok, failed

    def image_features(self, images: Sequence[ImageInput] | ImageInput, *, preprocess: str = "resize",
                       tokens: bool = False, batch_size: int | None = None,
                       max_num_patches: int | None = None) -> np.ndarray | list[np.ndarray]:
        """Pooled image embeddings (N, D) = the reference `pooler_output`; with tokens=True the (N, T, D)
        `last_hidden_state`. Any undecodable input raises `ImageError` naming it (see `encode_images` to skip).

        NaFlex (siglip2) models keep each image's aspect ratio, so their token count varies: tokens=True returns a
        list of N arrays (T_i, D), T_i = rows_i * cols_i patches in row-major order (padding removed), and
        max_num_patches sets the patch budget per image (default the checkpoint's 256; the checkpoints were
        evaluated at 256, 576, 784 and 1024)."""
        out = self.encode_images(images, preprocess=preprocess, tokens=tokens, batch_size=batch_size,
                                 on_error="raise", max_num_patches=max_num_patches)
        return out.tokens if tokens else out.features

    # -- text -----------------------------------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str] | str) -> tuple[np.ndarray, np.ndarray | None]:
        if self.tokenizer is None:
            raise SigliteError(f"{self.name}: this checkpoint has no tokenizer (vision-only model?)")
        return self.tokenizer(_as_list(texts))

    def text_features(self, texts: Sequence[str] | str, *, batch_size: int | None = None) -> np.ndarray:
        """Pooled text embeddings (N, P) = the reference text `pooler_output`, padded to the checkpoint's length."""
        texts = _as_list(texts)
        batch_size = batch_size or DEFAULT_BATCH
        out = [self.engine.encode_text(*self.tokenize(texts[i:i + batch_size]))
               for i in range(0, len(texts), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    # -- zero-shot ------------------------------------------------------------------------------------------------

    def logits(self, image_features: np.ndarray, text_features: np.ndarray) -> np.ndarray:
        """logits_per_image (N, M) from pooled embeddings, with the checkpoint's learned scale and bias."""
        return sigmoid_logits(torch.from_numpy(image_features), torch.from_numpy(text_features),
                              self.engine.logit_scale, self.engine.logit_bias).numpy()

    def classify(self, images: Sequence[ImageInput] | ImageInput, labels: Sequence[str], *,
                 template: str = DEFAULT_TEMPLATE, preprocess: str = "resize",
                 batch_size: int | None = None, max_num_patches: int | None = None) -> np.ndarray:
        """Sigmoid probabilities (N, L): each label scored independently (SigLIP is not a softmax model)."""
        if not labels:
            raise SigliteError("classify needs at least one label")
        prompts = [template.format(label) for label in labels]
        img = self.image_features(images, preprocess=preprocess, batch_size=batch_size, max_num_patches=max_num_patches)
        return 1.0 / (1.0 + np.exp(-self.logits(img, self.text_features(prompts))))


def _as_list(items) -> list:
    if isinstance(items, (str, bytes, os.PathLike, np.ndarray)) or hasattr(items, "getpixel"):
        return [items]
    return list(items)
