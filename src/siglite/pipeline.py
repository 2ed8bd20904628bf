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
from .preprocess.image import MAX_PIXELS_DEFAULT, ImageConfig, ImageInput, preprocess_batch

if TYPE_CHECKING:
    from .preprocess.text import TextTokenizer

DEFAULT_TEMPLATE = "This is a photo of {}."
DEFAULT_BATCH = 32
TOWER_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                "patch_size", "vocab_size", "max_position_embeddings", "projection_size")


@dataclass
class ImageBatch:
    """Result of `Model.encode_images`: rows for the inputs that decoded, and why the others did not."""

    features: np.ndarray  # (N_ok, D)
    tokens: np.ndarray | None  # (N_ok, T, D) when asked for
    indices: list[int]  # input index of each row
    failures: list[tuple[int, str]] = field(default_factory=list)  # (input index, one-line reason)


class Model:
    """A SigLIP checkpoint ready to embed images and texts and to classify."""

    def __init__(self, engine: Engine, image_config: ImageConfig | None, tokenizer: TextTokenizer | None,
                 *, name: str = "", folder: Path | None = None, config: dict | None = None):
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
                      batch_size: int | None = None, on_error: str = "skip", layer: int | Sequence[int] | None = None,
                      post_norm: bool = False) -> ImageBatch:
        """Embed images, keeping going past inputs that cannot be decoded when on_error="skip". `layer` /
        `post_norm`: see `image_features`."""
        if self.image_config is None:
            raise SigliteError(f"{self.name}: this checkpoint has no image preprocessing config (text-only model?)")
        taps = self.layer_options(tokens, layer, post_norm)
        images = _as_list(images)
        batch_size = batch_size or DEFAULT_BATCH
        feats, toks, indices, failures = [], [], [], []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            pixels, ok, failed = preprocess_batch(chunk, self.image_config, preprocess, on_error=on_error,
                                                  max_pixels=self.max_pixels, background=self.background)
            failures += [(start + i, reason) for i, reason in failed]
            if not ok:
                continue
            pooled, hidden = self.engine.encode_image(pixels, tokens=tokens, **taps)
            indices += [start + i for i in ok]
            if pooled is not None:
                feats.append(pooled)
            if hidden is not None:
                toks.append(hidden)
        return ImageBatch(
            features=np.concatenate(feats) if feats else np.zeros((0, 0), np.float32),
            tokens=np.concatenate(toks) if toks else None,
            indices=indices,
            failures=failures,
        )

    def image_features(self, images: Sequence[ImageInput] | ImageInput, *, preprocess: str = "resize",
                       tokens: bool = False, batch_size: int | None = None, layer: int | Sequence[int] | None = None,
                       post_norm: bool = False) -> np.ndarray:
        """Pooled image embeddings (N, D) = the reference `pooler_output`; with tokens=True the (N, T, D)
        `last_hidden_state`. Any undecodable input raises `ImageError` naming it (see `encode_images` to skip).

        VLM feature taps (tokens=True): `layer=K` returns transformers' `hidden_states[K]` (0 = embeddings, K = output
        of block K, negative from the end; -2 is LLaVA/Prismatic's choice) without the final LayerNorm, computing no
        block after K; `layer=[K1, K2]` concatenates them on the feature axis (N, T, D * 2); `post_norm=True` applies
        the tower's final LayerNorm to each (PaliGemma/SmolVLM take `last_hidden_state`, i.e. layer=None).
        """
        out = self.encode_images(images, preprocess=preprocess, tokens=tokens, batch_size=batch_size,
                                 on_error="raise", layer=layer, post_norm=post_norm)
        return out.tokens if tokens else out.features

    def layer_options(self, tokens: bool, layer, post_norm: bool) -> dict:
        """Engine keyword arguments for a layer tap (none for the default output, so every engine serves that)."""
        if layer is None:
            if post_norm:
                raise SigliteError("post_norm applies to a chosen layer; last_hidden_state (layer=None) is already "
                                   "after the final LayerNorm")
            return {}
        if not tokens:
            raise SigliteError("layer= selects token features: pass tokens=True (--tokens)")
        if not getattr(self.engine, "supports_layers", False):
            raise SigliteError(f"the {self.engine.name} engine does not serve intermediate layers; use the torch "
                               "engine, or export the tower cut at that layer (siglite export --layer K)")
        many = hasattr(layer, "__iter__")
        items = list(layer) if many else [layer]
        if not items or any(isinstance(k, bool) or not hasattr(k, "__index__") for k in items):
            raise SigliteError(f"layer must be an integer or a list of integers, got {layer!r}")
        items = [int(k) for k in items]  # plain ints (numpy integers too), so settings serialise as JSON
        return {"layer": items if many else items[0], "post_norm": bool(post_norm)}

    # -- fine-tuned classifiers ------------------------------------------------------------------------------------

    @property
    def labels(self) -> list[str] | None:
        """Class names of a fine-tuned classifier (config.json `id2label`, in index order), else None."""
        from .heads import is_classifier, labels_of

        return labels_of(self.config) if is_classifier(self.config) else None

    @property
    def multi_label(self) -> bool:
        return self.config.get("problem_type") == "multi_label_classification"

    def predict(self, images: Sequence[ImageInput] | ImageInput, *, preprocess: str = "resize",
                batch_size: int | None = None, on_error: str = "raise") -> np.ndarray:
        """Class probabilities (N, C) of a fine-tuned classifier (`siglite finetune`), columns in `labels` order:
        sigmoid per label for a multi-label model, softmax over labels otherwise. With on_error="skip" rows of
        undecodable images are NaN."""
        if self.labels is None:
            raise SigliteError(f"{self.name}: not a fine-tuned classifier (no id2label / classifier head); "
                               "use classify() for zero-shot labels")
        if not hasattr(self.engine, "image_logits"):
            raise SigliteError(f"the {self.engine.name} engine does not serve classifier logits")
        images = _as_list(images)
        batch_size = batch_size or DEFAULT_BATCH
        out = np.full((len(images), len(self.labels)), np.nan, np.float32)
        for start in range(0, len(images), batch_size):
            pixels, ok, _ = preprocess_batch(images[start:start + batch_size], self.image_config, preprocess,
                                             on_error=on_error, max_pixels=self.max_pixels,
                                             background=self.background)
            if ok:
                logits = self.engine.image_logits(pixels)
                out[[start + i for i in ok]] = _probabilities(logits, self.multi_label)
        return out

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
                 batch_size: int | None = None) -> np.ndarray:
        """Sigmoid probabilities (N, L): each label scored independently (SigLIP is not a softmax model)."""
        if not labels:
            raise SigliteError("classify needs at least one label")
        prompts = [template.format(label) for label in labels]
        img = self.image_features(images, preprocess=preprocess, batch_size=batch_size)
        return 1.0 / (1.0 + np.exp(-self.logits(img, self.text_features(prompts))))


def _probabilities(logits: np.ndarray, multi_label: bool) -> np.ndarray:
    if multi_label:
        return 1.0 / (1.0 + np.exp(-logits))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _as_list(items) -> list:
    if isinstance(items, (str, bytes, os.PathLike, np.ndarray)) or hasattr(items, "getpixel"):
        return [items]
    return list(items)
