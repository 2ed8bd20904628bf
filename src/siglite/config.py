"""The architecture of each tower as data: what differs between SigLIP and CLIP is a field here, not a branch in
`model.py` (as timm's `VisionTransformer(class_token=, pre_norm=, global_pool=)` and open_clip's `CLIPTextCfg`
`no_causal_mask` / `pool_type` do it).

Two kinds of fields:

* shape fields named as in transformers' configs (`SiglipVisionConfig`, `CLIPTextConfig`, ...), so
  `VisionConfig.from_dict(config_json["vision_config"])` reads a hub checkpoint as is;
* architecture fields (``metadata={"arch": True}``) that transformers spells as classes, not config values: class
  token, pre-LayerNorm, where the final LayerNorm applies, causal text attention, pooling, projection. They come
  from the family's data (``specs/families/<family>.json``), never from the checkpoint's config.json.

Nothing here imports torch or any other siglite module: everything else may import this.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from functools import cache
from importlib import resources

ARCH = {"arch": True}  # field metadata: a siglite architecture field, absent from transformers' config.json

VISION_POOLING = ("map", "cls")  # attention-pool head (SigLIP MAP) / the class token (CLIP)
TEXT_POOLING = ("last", "eos")  # the last position (SigLIP "sticky EOS") / the EOS position (CLIP)
LOGITS = ("sigmoid", "softmax")  # SigLIP: sigmoid(s * cos + b), scores independent; CLIP: softmax(s * cos)


@dataclass(frozen=True)
class TowerConfig:
    """What every transformer tower has: width, depth, heads, MLP, LayerNorm eps, activation."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"  # "quick_gelu" for OpenAI CLIP, "gelu" for most LAION CLIPs

    @classmethod
    def from_dict(cls, d: dict):
        """Build from a config dict, ignoring keys that are not fields (transformers configs carry many)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_hf(self) -> dict:
        """The transformers-named fields only (what a hub config.json holds); unset (None) ones left out."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if not f.metadata.get("arch") and getattr(self, f.name) is not None}

    def arch(self) -> dict:
        """The architecture fields only."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("arch")}


@dataclass(frozen=True)
class VisionConfig(TowerConfig):
    """A ViT image tower (SigLIP, CLIP)."""

    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    vision_use_head: bool = True  # SigLIP's name: False = no pooling head, so no pooled output (VLM towers)
    projection_dim: int | None = None  # CLIP visual_projection width (used when `projection` is true)
    # -- architecture (family data) --
    class_token: bool = field(default=False, metadata=ARCH)  # a learned class token before the patches (CLIP)
    pre_norm: bool = field(default=False, metadata=ARCH)  # LayerNorm on the embeddings (CLIP `pre_layrnorm`)
    # SigLIP: the final LayerNorm applies to every token (last_hidden_state is normed, the head pools normed tokens).
    # CLIP: last_hidden_state is the encoder output; `post_layernorm` applies to the pooled class token only.
    norm_tokens: bool = field(default=True, metadata=ARCH)
    patch_bias: bool = field(default=True, metadata=ARCH)  # CLIP's patch convolution has no bias
    pooling: str = field(default="map", metadata=ARCH)  # one of VISION_POOLING
    projection: bool = field(default=False, metadata=ARCH)  # a Linear after pooling (CLIP visual_projection)
    projection_bias: bool = field(default=False, metadata=ARCH)
    # NaFlex (SigLIP 2 "siglip2" checkpoints): pixels arrive pre-patchified as (B, N, p*p*C) channel-last patches
    # with each image's (rows, cols) patch grid; the patch embedding is a Linear, the square position grid
    # (image_size // patch_size per side) is resized to each image's grid, and padded patches are masked.
    variable_resolution: bool = field(default=False, metadata=ARCH)

    def __post_init__(self):
        if self.pooling not in VISION_POOLING:
            raise ValueError(f"vision pooling {self.pooling!r} is not one of {VISION_POOLING}")

    @property
    def grid(self) -> int:
        """Patches per side: the convolution is 'valid', so 384 px with patch 14 gives 27 and drops 6 px."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2

    @property
    def num_tokens(self) -> int:
        """Tokens in last_hidden_state: the patches, plus the class token if any."""
        return self.num_patches + int(self.class_token)

    @property
    def pooled_size(self) -> int | None:
        """Width of the pooled output (None without a pooling head)."""
        if not self.vision_use_head:
            return None
        return (self.projection_dim or self.hidden_size) if self.projection else self.hidden_size


@dataclass(frozen=True)
class TextConfig(TowerConfig):
    """A text transformer (SigLIP, CLIP)."""

    vocab_size: int = 32000
    max_position_embeddings: int = 64
    projection_size: int | None = None  # SigLIP's name for the text head width (None = hidden_size)
    projection_dim: int | None = None  # CLIP's name for the text_projection width
    # CLIP EOS pooling: transformers' CLIPTextTransformer pools at argmax(ids) when eos_token_id == 2 (configs saved
    # before transformers PR #24773) and at the first `eos_token_id` otherwise.
    eos_token_id: int | None = None
    # -- architecture (family data) --
    causal: bool = field(default=False, metadata=ARCH)  # causal self-attention (CLIP)
    pooling: str = field(default="last", metadata=ARCH)  # one of TEXT_POOLING
    projection: bool = field(default=True, metadata=ARCH)  # SigLIP `head`, CLIP `text_projection`
    projection_bias: bool = field(default=True, metadata=ARCH)  # SigLIP's head has a bias, CLIP's projection not

    def __post_init__(self):
        if self.pooling not in TEXT_POOLING:
            raise ValueError(f"text pooling {self.pooling!r} is not one of {TEXT_POOLING}")

    @property
    def pooled_size(self) -> int:
        if not self.projection:
            return self.hidden_size
        return self.projection_dim or self.projection_size or self.hidden_size

    @property
    def eos_rule(self) -> str:
        """"argmax" (the highest id is the EOS, legacy CLIP configs) or "first" (first `eos_token_id`)."""
        return "argmax" if self.eos_token_id in (None, 2) else "first"


# -- families (data in specs/families/*.json) -------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """A model family: transformers model types, default and architecture fields per tower, logit kind.

    Attributes:
        name: "siglip", "clip".
        logits: one of LOGITS.
        model_types: transformers model_type -> the towers its checkpoint holds.
        checkpoint_format: the `siglite.checkpoints` module that maps its transformers weights.
        vision, text: {"defaults": transformers class defaults (config.json overrides them),
            "arch": architecture fields (fixed by the family)}.
        hf: names transformers uses when saving (model_type, architectures, sub-config model types).
        text_mask: whether the text tower gets the tokenizer's padding mask by default (`siglite.load(text_mask=None)`):
            SigLIP was trained without one (big_vision); CLIP's transformers forward passes it (with its causal mask and
            EOS pooling the pooled output is the same either way).
    """

    name: str
    logits: str
    model_types: dict
    checkpoint_format: str
    vision: dict
    text: dict
    hf: dict
    text_mask: bool = False

    def vision_config(self, d: dict, **overrides) -> VisionConfig:
        """config.json's vision part -> VisionConfig: the family's defaults under it, its architecture over it;
        `overrides` (what the checkpoint's class implies, e.g. no projection in CLIPVisionModel) last."""
        return VisionConfig.from_dict({**self.vision["defaults"], **d, **self.vision["arch"], **overrides})

    def text_config(self, d: dict, **overrides) -> TextConfig:
        return TextConfig.from_dict({**self.text["defaults"], **d, **self.text["arch"], **overrides})


@cache
def families() -> dict[str, Family]:
    """All model families, by name."""
    out = {}
    folder = resources.files("siglite.specs").joinpath("families")
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".json"):
            fam = Family(**json.loads(entry.read_text()))
            if fam.logits not in LOGITS:
                raise ValueError(f"{entry.name}: logits {fam.logits!r} is not one of {LOGITS}")
            out[fam.name] = fam
    return out


def family(name: str) -> Family:
    return families()[name]


def family_of_model_type(model_type: str | None) -> Family | None:
    """The family whose transformers checkpoints use `model_type` ("siglip", "clip_vision_model", ...)."""
    return next((f for f in families().values() if model_type in f.model_types), None)


def known_model_types() -> list[str]:
    return sorted(t for f in families().values() for t in f.model_types)
