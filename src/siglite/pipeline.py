"""`Model`: a loaded SigLIP checkpoint behind one API, whatever engine runs it.

Images and texts go in as Python objects; preprocessing follows the checkpoint's own settings; numpy comes out.
"""

from __future__ import annotations

import os
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from .engines.base import Engine
from .errors import SigliteError
from .preprocess import naflex
from .preprocess.image import MAX_PIXELS_DEFAULT, ImageConfig, ImageInput, preprocess_batch

if TYPE_CHECKING:
    from .preprocess.text import TextTokenizer

Progress = Callable[[int], None]  # called with the number of inputs just finished (see siglite.progress)

DEFAULT_TEMPLATE = "This is a photo of {}."
DEFAULT_BATCH = 32
_SHARED_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
# Only the fields that mean something for each tower (a saved text_config also carries an unused image_size).
TOWER_FIELDS = {"vision_config": (*_SHARED_FIELDS, "image_size", "patch_size", "num_channels", "projection_dim",
                                  "num_patches"),
                "text_config": (*_SHARED_FIELDS, "vocab_size", "max_position_embeddings", "projection_size",
                                "projection_dim")}


def check_batch_size(batch_size: int | None) -> int:
    """None -> the default; anything but a positive int is an error (a negative size used to return no rows)."""
    if batch_size is None:
        return DEFAULT_BATCH
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise SigliteError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def check_template(template: str) -> str:
    """A prompt template must hold exactly one ``{}`` (or ``{0}``) where the label goes.

    Raises:
        SigliteError: One line saying what is wrong: no placeholder (every label would get the same prompt, hence the
            same score), a named field such as ``{label}``, several placeholders, or unbalanced braces.
    """
    if not isinstance(template, str):
        raise SigliteError(f"template must be a string, got {type(template).__name__}")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise SigliteError(f"template {template!r}: {e} (write {{{{ and }}}} for literal braces)") from None
    named = [f for f in fields if f not in ("", "0")]
    if named:
        raise SigliteError(f"template {template!r} has a named field {{{named[0]}}}; use {{}} where the label goes")
    if len(fields) != 1:
        what = "no {} placeholder (every label would score the same)" if not fields else f"{len(fields)} {{}} fields"
        raise SigliteError(f"template {template!r} has {what}; use exactly one {{}} where the label goes")
    return template


def check_labels(labels: Sequence[str] | str) -> list[str]:
    """A str is one label (not a sequence of one-character labels); an empty list or a non-str label is an error."""
    labels = [labels] if isinstance(labels, str) else list(labels)
    if not labels:
        raise SigliteError("classify needs at least one label")
    bad = [x for x in labels if not isinstance(x, str)]
    if bad:
        raise SigliteError(f"labels must be strings, got {type(bad[0]).__name__} {bad[0]!r}")
    return labels


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
                 config: dict | None = None, text_mask: bool = False):
        self.engine = engine
        self.image_config = image_config
        self.tokenizer = tokenizer
        self.name = name
        self.folder = folder
        self.config = config or {}
        # False: SigLIP as trained (no padding mask); True: the tokenizer's attention_mask, as transformers 5 applies it
        self.text_mask = text_mask
        self.max_pixels: int | None = MAX_PIXELS_DEFAULT
        self.background = (255, 255, 255)  # RGBA/LA inputs are composited on white, as transformers does
        # NaFlex: the patch budget of calls that name none (None: an exported graph's, else the checkpoint's); the
        # CLI's --max-num-patches sets it, so embed / eval / serve follow it without a parameter of their own
        self.max_num_patches: int | None = None

    def __repr__(self) -> str:
        return f"Model({self.name!r}, engine={self.engine.name}, precision={self.engine.precision})"

    def describe(self) -> dict:
        """What this model is: towers, preprocessing, tokenizer, engine (for `siglite info` and sidecars)."""
        towers = {k: {f: v[f] for f in fields if v.get(f) is not None} for k, fields in TOWER_FIELDS.items()
                  if isinstance(v := self.config.get(k), dict)}
        image = self.image_config.to_dict() if self.image_config else None
        if isinstance(self.image_config, naflex.NaflexConfig):  # the budget calls run at, not only the checkpoint's
            image["max_num_patches"] = self.patch_budget()
        return {
            "name": self.name, "folder": str(self.folder), "engine": self.engine.name,
            "precision": self.engine.precision, "model_type": self.config.get("model_type"), **towers,
            "image": image,
            "tokenizer": self.tokenizer.settings() if self.tokenizer else None, "text_mask": self.text_mask,
            "logit_scale": self.engine.logit_scale, "logit_bias": self.engine.logit_bias,
            "logits": self.logit_kind,
        }

    @property
    def logit_kind(self) -> str:
        """"sigmoid" (SigLIP: each image-text score on its own) or "softmax" (CLIP: scores compete over texts)."""
        return getattr(self.engine, "logit_kind", "sigmoid")

    # -- images ---------------------------------------------------------------------------------------------------

    def encode_images(self, images: Sequence[ImageInput], *, preprocess: str = "resize", tokens: bool = False,
                      batch_size: int | None = None, on_error: str = "skip", layer: int | Sequence[int] | None = None,
                      post_norm: bool = False, max_num_patches: int | None = None,
                      progress: Progress | None = None) -> ImageBatch:
        """Embed images, keeping going past inputs that cannot be decoded when on_error="skip"; `progress(n)` is
        called after each batch with its number of inputs. `layer` / `post_norm` / `max_num_patches`: see
        `image_features`."""
        if self.image_config is None:
            raise SigliteError(f"{self.name}: this checkpoint has no image preprocessing config (text-only model?)")
        taps = self.layer_options(tokens, layer, post_norm)
        patches = isinstance(self.image_config, naflex.NaflexConfig)
        if max_num_patches is not None and not patches:
            raise SigliteError(f"{self.name}: max_num_patches applies to NaFlex (siglip2) models only")
        if patches and preprocess != "resize":
            raise SigliteError(f"{self.name}: NaFlex models keep the aspect ratio; preprocess={preprocess!r} does not "
                               "apply (use 'resize')")
        images = _as_list(images)
        batch_size = check_batch_size(batch_size)
        feats, toks, indices, failures = [], [], [], []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            if patches:
                pooled, hidden, ok, failed = self._encode_patches(chunk, tokens, on_error, max_num_patches, taps)
            else:
                pixels, ok, failed = preprocess_batch(chunk, self.image_config, preprocess, on_error=on_error,
                                                      max_pixels=self.max_pixels, background=self.background)
                pooled, hidden = self.engine.encode_image(pixels, tokens=tokens, **taps) if ok else (None, None)
            failures += [(start + i, reason) for i, reason in failed]
            if ok:
                indices += [start + i for i in ok]
                if pooled is not None:
                    feats.append(pooled)
                if hidden is not None:
                    toks.append(hidden)
            if progress is not None:
                progress(len(chunk))
        if patches:  # NaFlex: one (T_i, D) array per image
            tokens_out = [t for batch in toks for t in batch] if tokens else None
        else:
            tokens_out = np.concatenate(toks) if toks else None
        return ImageBatch(
            features=np.concatenate(feats) if feats else np.zeros((0, 0), np.float32),
            tokens=tokens_out,
            indices=indices,
            failures=failures,
        )

    def patch_budget(self, max_num_patches: int | None = None) -> int:
        """The NaFlex patch budget a call runs at: `max_num_patches`, else `self.max_num_patches`, else an exported
        graph's fixed budget, else the checkpoint's (256 for the hub checkpoints).

        Raises:
            SigliteError: one line, for a model that is not NaFlex, a budget that is not a positive int, or one
                larger than the exported graph's.
        """
        if not isinstance(self.image_config, naflex.NaflexConfig):
            raise SigliteError(f"{self.name}: max_num_patches applies to NaFlex (siglip2) models only")
        pad_to = getattr(self.engine, "num_patches", None)  # exported graphs run at one fixed patch budget
        budget = next((b for b in (max_num_patches, self.max_num_patches, pad_to) if b is not None),
                      self.image_config.max_num_patches)
        if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
            raise SigliteError(f"max_num_patches must be a positive int, got {budget!r}")
        if pad_to is not None and budget > pad_to:
            raise SigliteError(f"{self.name}: this engine runs at a fixed max_num_patches={pad_to} (an export's, or "
                               f"the cuda engine's); {budget} does not fit")
        return int(budget)

    def set_patch_budget(self, max_num_patches: int | None) -> Model:
        """Make `max_num_patches` the NaFlex patch budget of calls that name none (None: leave it as it is); checked
        as `patch_budget` checks it (one-line errors). Returns the model."""
        if max_num_patches is not None:
            self.max_num_patches = self.patch_budget(max_num_patches)
        return self

    def _encode_patches(self, chunk: list, tokens: bool, on_error: str, max_num_patches: int | None, taps: dict):
        """NaFlex: one batch padded to its longest image (or to the engine's fixed length); tokens cut back to each
        image's own rows*cols."""
        pad_to = getattr(self.engine, "num_patches", None)
        budget = self.patch_budget(max_num_patches)
        batch, ok, failed = naflex.preprocess_batch(chunk, self.image_config, max_num_patches=budget, pad_to=pad_to,
                                                    on_error=on_error, max_pixels=self.max_pixels,
                                                    background=self.background)
        if not ok:
            return None, None, ok, failed
        pooled, hidden = self.engine.encode_image(batch.patches, tokens=tokens, spatial_shapes=batch.spatial_shapes,
                                                  **taps)
        if hidden is not None:
            hidden = [h[:n] for h, n in zip(hidden, batch.lengths)]
        return pooled, hidden, ok, failed

    def image_features(self, images: Sequence[ImageInput] | ImageInput, *, preprocess: str = "resize",
                       tokens: bool = False, batch_size: int | None = None, layer: int | Sequence[int] | None = None,
                       post_norm: bool = False, max_num_patches: int | None = None,
                       progress: Progress | None = None) -> np.ndarray | list[np.ndarray]:
        """Pooled image embeddings (N, D) = the reference `pooler_output`; with tokens=True the (N, T, D)
        `last_hidden_state`. Any undecodable input raises `ImageError` naming it (see `encode_images` to skip).

        VLM feature taps (tokens=True): `layer=K` returns transformers' `hidden_states[K]` (0 = embeddings, K = output
        of block K, negative from the end; -2 is LLaVA/Prismatic's choice) without the final LayerNorm, computing no
        block after K; `layer=[K1, K2]` concatenates them on the feature axis (N, T, D * 2); `post_norm=True` applies
        the tower's final LayerNorm to each (PaliGemma/SmolVLM take `last_hidden_state`, i.e. layer=None).

        NaFlex (siglip2) models keep each image's aspect ratio, so their token count varies: tokens=True returns a
        list of N arrays (T_i, D), T_i = rows_i * cols_i patches in row-major order (padding removed), and
        max_num_patches sets the patch budget per image (default the checkpoint's 256; the checkpoints were
        evaluated at 256, 576, 784 and 1024).
        """
        out = self.encode_images(images, preprocess=preprocess, tokens=tokens, batch_size=batch_size,
                                 on_error="raise", layer=layer, post_norm=post_norm, max_num_patches=max_num_patches,
                                 progress=progress)
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
        """(N, L) int64 ids and the padding mask the text tower gets: None unless loaded with text_mask=True (then the
        tokenizer's attention_mask, or None when it returns none)."""
        if self.tokenizer is None:
            raise SigliteError(f"{self.name}: this checkpoint has no tokenizer (vision-only model?)")
        ids, mask = self.tokenizer(_as_list(texts))
        return ids, (mask if self.text_mask else None)

    def text_features(self, texts: Sequence[str] | str, *, batch_size: int | None = None,
                      progress: Progress | None = None) -> np.ndarray:
        """Pooled text embeddings (N, P) = the reference text `pooler_output`, padded to the checkpoint's length."""
        texts = _as_list(texts)
        batch_size = check_batch_size(batch_size)
        out = []
        for i in range(0, len(texts), batch_size):
            out.append(self.engine.encode_text(*self.tokenize(texts[i:i + batch_size])))
            if progress is not None:
                progress(len(texts[i:i + batch_size]))
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    # -- zero-shot ------------------------------------------------------------------------------------------------

    def logits(self, image_features: np.ndarray, text_features: np.ndarray) -> np.ndarray:
        """logits_per_image (N, M) from pooled embeddings, with the checkpoint's learned scale (and bias, SigLIP)."""
        import torch

        from .model import pair_logits

        return pair_logits(torch.from_numpy(image_features), torch.from_numpy(text_features),
                           self.engine.logit_scale, self.engine.logit_bias, self.logit_kind).numpy()

    def scores(self, logits: np.ndarray) -> np.ndarray:
        """Logits (N, L) -> probabilities with the model's own scoring. SigLIP: sigmoid, each label on its own (rows
        need not sum to 1). CLIP: softmax over the labels, as transformers' `logits_per_image.softmax(dim=1)` (the
        labels compete; each row sums to 1, so the answer depends on which labels are offered)."""
        if self.logit_kind == "softmax":
            z = logits - logits.max(axis=1, keepdims=True)
            e = np.exp(z)
            return e / e.sum(axis=1, keepdims=True)
        return 1.0 / (1.0 + np.exp(-logits))

    def classify(self, images: Sequence[ImageInput] | ImageInput, labels: Sequence[str] | str, *,
                 template: str = DEFAULT_TEMPLATE, preprocess: str = "resize", batch_size: int | None = None,
                 top_k: int | None = None, max_num_patches: int | None = None, progress: Progress | None = None):
        """Probabilities with the model's own scoring (`scores`): SigLIP's sigmoid scores each label on its own;
        CLIP's softmax makes the offered labels compete.

        Args:
            images: One image or a sequence of them.
            labels: Candidate labels; a str is one label.
            template: Prompt with one ``{}`` for the label (checked: no placeholder or a named field is an error).
            preprocess: "resize" or "letterbox".
            batch_size: Images / prompts per forward pass (a positive int; default 32).
            top_k: None returns the (N, L) array. An int returns, as transformers' zero-shot pipeline does, the
                `top_k` best labels sorted by score, ``[{"label": ..., "score": ...}, ...]``: one such list for a
                single image, a list of them for a sequence of images.
            max_num_patches: NaFlex models: the patch budget per image (see `image_features`).
            progress: Called with the number of prompts, then images, done after each batch.
        """
        labels = check_labels(labels)
        check_template(template)
        batch_size = check_batch_size(batch_size)
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise SigliteError(f"top_k must be a positive integer, got {top_k!r}")
        prompts = [template.format(label) for label in labels]
        txt = self.text_features(prompts, batch_size=batch_size, progress=progress)
        img = self.image_features(images, preprocess=preprocess, batch_size=batch_size, max_num_patches=max_num_patches,
                                  progress=progress)
        probs = self.scores(self.logits(img, txt))
        if top_k is None:
            return probs
        ranked = [ranked_labels(p, labels, top_k) for p in probs]
        return ranked[0] if _is_single(images) else ranked


def ranked_labels(scores: np.ndarray, labels: Sequence[str], top_k: int | None = None) -> list[dict]:
    """``[{"label", "score"}]`` best first (ties keep label order), at most `top_k` entries."""
    order = np.argsort(-np.asarray(scores), kind="stable")[:top_k]
    return [{"label": labels[j], "score": float(scores[j])} for j in order]


def _is_single(items) -> bool:
    return isinstance(items, (str, bytes, os.PathLike, np.ndarray)) or hasattr(items, "getpixel")


def _probabilities(logits: np.ndarray, multi_label: bool) -> np.ndarray:
    if multi_label:
        return 1.0 / (1.0 + np.exp(-logits))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _as_list(items) -> list:
    if _is_single(items):
        return [items]
    return list(items)
