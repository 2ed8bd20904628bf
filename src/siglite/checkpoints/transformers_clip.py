"""transformers CLIP checkpoints <-> our model: `CLIPModel`, `CLIPVisionModel`, `CLIPVisionModelWithProjection`,
`CLIPTextModel`, `CLIPTextModelWithProjection` (openai/clip-vit-*, laion/CLIP-ViT-*).

Key names from transformers `models/clip/modeling_clip.py` (v5.24). The bare classes (`CLIPVisionModel`,
`CLIPTextModel`) are found saved with and without the `vision_model.` / `text_model.` prefix (transformers 4 always
writes it; transformers 5 writes it only for a model loaded from a prefixed checkpoint); both load. The projections are bias-free Linear layers outside the towers (`visual_projection`, `text_projection`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import family
from ..errors import LoadError
from .base import (CONFIG, SAFETENSORS, Checkpoint, KeyMap, map_blocks, plain_state_dict, single_tower_prefix,
                   unmap_blocks)

FAMILY = "clip"
VISION_KEYS = {"embeddings.patch_embedding": "patch_embed", "pre_layrnorm": "pre_norm", "post_layernorm": "norm"}
TEXT_KEYS = {"embeddings.token_embedding": "tok_embed", "final_layer_norm": "norm"}
IGNORED_SUFFIXES = ("embeddings.position_ids",)
# classes whose checkpoints carry a projection (the others end at the pooled output)
PROJECTED = {"CLIPModel", "CLIPVisionModelWithProjection", "CLIPTextModelWithProjection"}


def read_config(folder: Path, config: dict) -> Checkpoint:
    """config.json -> towers and shapes. CLIPModel's top-level `projection_dim` sizes both projections (the
    sub-configs' own `projection_dim` is ignored, as CLIPModel.__init__ does)."""
    fam = family(FAMILY)
    model_type = config["model_type"]
    towers = fam.model_types[model_type]
    try:
        if model_type == "clip":
            proj = {"projection_dim": config.get("projection_dim", fam.vision["defaults"]["projection_dim"])}
            vision = fam.vision_config(config.get("vision_config") or {}, **proj)
            text = fam.text_config(config.get("text_config") or {}, **proj)
        else:
            key = "visual_projection" if "vision" in towers else "text_projection"
            projected = _has_projection(folder, config, key)
            vision = fam.vision_config(config, projection=projected) if "vision" in towers else None
            text = fam.text_config(config, projection=projected) if "text" in towers else None
    except (TypeError, ValueError) as e:
        raise LoadError(f"{folder / CONFIG}: bad tower config ({e})") from e
    optional = {"logit_bias"} | ({"logit_scale"} if vision is None or text is None else set())
    return Checkpoint(folder, config, vision, text, format="transformers_clip", logits=fam.logits, optional=optional)


def _has_projection(folder: Path, config: dict, key: str) -> bool:
    """Whether a single-tower checkpoint is the *WithProjection class: config.json's `architectures`, else whether
    the safetensors file holds the projection."""
    archs = config.get("architectures") or []
    if archs:
        return any(a in PROJECTED for a in archs)
    if (folder / SAFETENSORS).is_file():
        from safetensors import safe_open

        with safe_open(folder / SAFETENSORS, "pt") as f:
            return f"{key}.weight" in f.keys()
    return False


def to_ours(weights: dict[str, torch.Tensor], ckpt: Checkpoint) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Map a transformers CLIP state dict to ours. Returns (our state dict, the transformers keys used)."""
    km = KeyMap(weights, bare=single_tower_prefix(ckpt))
    km.ignore(IGNORED_SUFFIXES)
    if ckpt.vision is not None:
        v = "vision_model"
        map_blocks(km, v, "vision", ckpt.vision.num_hidden_layers)
        for theirs, mine in VISION_KEYS.items():
            km.linear(f"{v}.{theirs}", f"vision.{mine}")
        km.put(f"{v}.embeddings.class_embedding", "vision.cls_token", lambda t: t.reshape(1, 1, -1))  # (D,)
        km.put(f"{v}.embeddings.position_embedding.weight", "vision.pos_embed", lambda t: t[None])  # (1, T, D)
        km.put("visual_projection.weight", "vision.proj.weight")
    if ckpt.text is not None:
        t = "text_model"
        map_blocks(km, t, "text", ckpt.text.num_hidden_layers)
        for theirs, mine in TEXT_KEYS.items():
            km.linear(f"{t}.{theirs}", f"text.{mine}")
        km.put(f"{t}.embeddings.position_embedding.weight", "text.pos_embed", lambda x: x[None])
        km.put("text_projection.weight", "text.head.weight")
    km.put("logit_scale", "logit_scale", lambda x: x.reshape(1))
    return km.out, km.used


def to_hf(model) -> dict[str, torch.Tensor]:
    """Our state dict -> transformers names: CLIPModel for both towers, else the single-tower class as transformers 5
    saves it (bare keys without a projection, `vision_model.` / `text_model.` with one)."""
    ours = plain_state_dict(model)
    hf: dict[str, torch.Tensor] = {}
    both = model.vision is not None and model.text is not None
    if model.vision is not None:
        v = "vision_model" if both or model.vision.cfg.projection else ""
        unmap_blocks(ours, hf, v, "vision", model.vision.cfg.num_hidden_layers)
        for theirs, mine in VISION_KEYS.items():
            for p in ("weight", "bias"):
                if f"vision.{mine}.{p}" in ours:
                    hf[f"{v}.{theirs}.{p}"] = ours[f"vision.{mine}.{p}"]
        hf[f"{v}.embeddings.class_embedding"] = ours["vision.cls_token"].reshape(-1)
        hf[f"{v}.embeddings.position_embedding.weight"] = ours["vision.pos_embed"][0]
        if model.vision.cfg.projection:
            hf["visual_projection.weight"] = ours["vision.proj.weight"]
    if model.text is not None:
        t = "text_model" if both or model.text.cfg.projection else ""
        unmap_blocks(ours, hf, t, "text", model.text.cfg.num_hidden_layers)
        for theirs, mine in TEXT_KEYS.items():
            for p in ("weight", "bias"):
                if f"text.{mine}.{p}" in ours:
                    hf[f"{t}.{theirs}.{p}"] = ours[f"text.{mine}.{p}"]
        hf[f"{t}.embeddings.position_embedding.weight"] = ours["text.pos_embed"][0]
        if model.text.cfg.projection:
            hf["text_projection.weight"] = ours["text.head.weight"]
    if both:
        hf["logit_scale"] = ours["logit_scale"].reshape(())  # a 0-d parameter in CLIPModel
    return {k.removeprefix("."): v for k, v in hf.items()}


def hf_config(model) -> dict:
    """A transformers config.json for `model`: CLIPModel, or a flat single-tower config."""
    hf = family(FAMILY).hf
    if model.vision is not None and model.text is not None:
        return {"model_type": hf["model_type"], "architectures": hf["architectures"],
                "projection_dim": model.vision.cfg.pooled_size,
                "logit_scale_init_value": float(model.logit_scale.detach().float().reshape(())),
                "vision_config": {"model_type": hf["vision_model_type"], **model.vision.cfg.to_hf()},
                "text_config": {"model_type": hf["text_model_type"], **model.text.cfg.to_hf()}}
    if model.vision is not None:
        arch = "CLIPVisionModelWithProjection" if model.vision.cfg.projection else "CLIPVisionModel"
        return {"model_type": hf["vision_model_type"], "architectures": [arch], **model.vision.cfg.to_hf()}
    arch = "CLIPTextModelWithProjection" if model.text.cfg.projection else "CLIPTextModel"
    return {"model_type": hf["text_model_type"], "architectures": [arch], **model.text.cfg.to_hf()}
