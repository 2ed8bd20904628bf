"""transformers SigLIP checkpoints (`SiglipModel`, `SiglipVisionModel`, `SiglipTextModel`) <-> our model.

Key names from transformers `models/siglip/modeling_siglip.py`; q/k/v are fused, the MAP head's
`nn.MultiheadAttention` in_proj is split into our q (for the probe) and kv (for the tokens).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..config import Family, family, family_of_model_type
from ..errors import LoadError
from .base import CONFIG, Checkpoint, KeyMap, map_blocks, plain_state_dict, single_tower_prefix, unmap_blocks

FAMILY = "siglip"
# transformers' names for our vision/text parts outside the blocks (weight and bias each)
VISION_KEYS = {
    "embeddings.patch_embedding": "patch_embed",
    "post_layernorm": "norm",
    "head.attention.out_proj": "head.proj",
    "head.layernorm": "head.norm",
    "head.mlp.fc1": "head.mlp.fc1",
    "head.mlp.fc2": "head.mlp.fc2",
}
TEXT_KEYS = {
    "embeddings.token_embedding": "tok_embed",
    "final_layer_norm": "norm",
    "head": "head",
}
NAFLEX = "siglip2-naflex"  # the family of transformers' Siglip2Model (model_type "siglip2"): SigLIP's weight names
# Buffers transformers may save that carry no learned state.
IGNORED_SUFFIXES = ("embeddings.position_ids",)


def naflex_vision_fields(vision: dict, where: Path) -> dict:
    """A Siglip2VisionConfig dict -> our VisionConfig fields: the square position grid of `num_patches` becomes
    image_size = grid * patch_size (so `VisionConfig.grid` is its side)."""
    num_patches = vision.get("num_patches", 256)  # Siglip2VisionConfig's default
    grid = math.isqrt(num_patches) if isinstance(num_patches, int) and num_patches > 0 else 0
    if grid * grid != num_patches:
        raise LoadError(f"{where}: vision_config.num_patches {num_patches!r} is not a square number of patches")
    patch_size = vision.get("patch_size", 16)
    if not isinstance(patch_size, int):  # transformers allows a (p, p) pair; the checkpoints use one int
        raise LoadError(f"{where}: vision_config.patch_size {patch_size!r}: only square patches (one int) supported")
    return {**vision, "image_size": grid * patch_size, "patch_size": patch_size}


def read_config(folder: Path, config: dict) -> Checkpoint:
    """config.json -> which towers, at which shapes (family defaults under it, as transformers' config classes).
    SiglipModel and Siglip2Model (NaFlex) checkpoints share this format; the model_type picks the family."""
    fam = family_of_model_type(config["model_type"]) or family(FAMILY)
    towers = fam.model_types[config["model_type"]]
    try:
        vision_dict = config.get("vision_config", config)
        if fam.vision["arch"].get("variable_resolution") and "vision" in towers:
            vision_dict = naflex_vision_fields(vision_dict, folder / CONFIG)
        vision = fam.vision_config(vision_dict) if "vision" in towers else None
        text = fam.text_config(config.get("text_config", config)) if "text" in towers else None
    except (TypeError, ValueError) as e:
        raise LoadError(f"{folder / CONFIG}: bad tower config ({e})") from e
    optional = {"logit_scale", "logit_bias"} if vision is None or text is None else set()
    return Checkpoint(folder, config, vision, text, format="transformers_siglip", logits=fam.logits,
                      optional=optional)


def to_ours(weights: dict[str, torch.Tensor], ckpt: Checkpoint) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Map a transformers SiglipModel state dict to ours. Returns (our state dict, the transformers keys used)."""
    km = KeyMap(weights, bare=single_tower_prefix(ckpt))
    km.ignore(IGNORED_SUFFIXES)
    if ckpt.vision is not None:
        v = "vision_model"
        map_blocks(km, v, "vision", ckpt.vision.num_hidden_layers)
        for theirs, mine in VISION_KEYS.items():
            km.linear(f"{v}.{theirs}", f"vision.{mine}")
        # (T, D) -> (1, T, D)
        km.put(f"{v}.embeddings.position_embedding.weight", "vision.pos_embed", lambda t: t[None])
        if ckpt.vision.vision_use_head:
            km.put(f"{v}.head.probe", "vision.head.probe")
            # nn.MultiheadAttention keeps q, k, v in one (3D, D) in_proj: q goes to the probe, k/v to the tokens
            w, b = km.take(f"{v}.head.attention.in_proj_weight"), km.take(f"{v}.head.attention.in_proj_bias")
            if w is not None and b is not None:
                D = ckpt.vision.hidden_size
                km.out["vision.head.q.weight"], km.out["vision.head.kv.weight"] = w[:D], w[D:]
                km.out["vision.head.q.bias"], km.out["vision.head.kv.bias"] = b[:D], b[D:]
    if ckpt.text is not None:
        t = "text_model"
        map_blocks(km, t, "text", ckpt.text.num_hidden_layers)
        for theirs, mine in TEXT_KEYS.items():
            km.linear(f"{t}.{theirs}", f"text.{mine}")
        km.put(f"{t}.embeddings.position_embedding.weight", "text.pos_embed", lambda x: x[None])
    for name in ("logit_scale", "logit_bias"):
        km.put(name, name, lambda x: x.reshape(1))
    return km.out, km.used


def to_hf(model) -> dict[str, torch.Tensor]:
    """Our state dict -> transformers SiglipModel names (the inverse of `to_ours`), for saving checkpoints that
    transformers loads too."""
    ours = plain_state_dict(model)
    hf: dict[str, torch.Tensor] = {}
    towers = [("vision_model", "vision", model.vision, VISION_KEYS), ("text_model", "text", model.text, TEXT_KEYS)]
    for prefix, name, tower, extra in towers:
        if tower is None:
            continue
        unmap_blocks(ours, hf, prefix, name, tower.cfg.num_hidden_layers)
        for theirs, mine in extra.items():
            for p in ("weight", "bias"):
                if f"{name}.{mine}.{p}" in ours:
                    hf[f"{prefix}.{theirs}.{p}"] = ours[f"{name}.{mine}.{p}"]
        hf[f"{prefix}.embeddings.position_embedding.weight"] = ours[f"{name}.pos_embed"][0]
    if model.vision is not None and model.vision.head is not None:
        hf["vision_model.head.probe"] = ours["vision.head.probe"]
        for p in ("weight", "bias"):
            hf[f"vision_model.head.attention.in_proj_{p}"] = torch.cat([ours[f"vision.head.q.{p}"],
                                                                       ours[f"vision.head.kv.{p}"]])
    if model.vision is not None and model.text is not None:
        hf["logit_scale"], hf["logit_bias"] = ours["logit_scale"], ours["logit_bias"]
    return hf


def model_family(model) -> Family:
    """SigLIP or SigLIP 2 NaFlex, from the model's vision architecture."""
    naflex = model.vision is not None and model.vision.cfg.variable_resolution
    return family(NAFLEX if naflex else FAMILY)


def hf_config(model) -> dict:
    """A transformers config.json for `model` (SiglipModel / Siglip2Model, or a flat vision-only config)."""
    hf = model_family(model).hf
    config: dict = {"model_type": hf["model_type"], "architectures": hf["architectures"]}
    if model.vision is not None:
        vision = model.vision.cfg.to_hf()
        if model.vision.cfg.variable_resolution:  # transformers stores the square position grid as num_patches
            vision.pop("image_size")
            vision["num_patches"] = model.vision.cfg.num_patches
        config["vision_config"] = {"model_type": hf["vision_model_type"], **vision}
    if model.text is not None:
        config["text_config"] = {"model_type": hf["text_model_type"], **model.text.cfg.to_hf()}
    if model.text is None:  # a single-tower config is flat, as SiglipVisionConfig / SiglipTextConfig save it
        tower = config.pop("vision_config")
        config = {**config, **tower, "model_type": hf["vision_model_type"], "architectures": hf["vision_architectures"]}
    elif model.vision is None:
        tower = config.pop("text_config")
        config = {**config, **tower, "model_type": hf["text_model_type"], "architectures": hf["text_architectures"]}
    return config
