"""Hub id or folder -> config, weights, tokenizer and image settings.

Weights are mapped from transformers' `SiglipModel` names to ours by an explicit table; every shape is checked and
missing or unused weights are reported by name (as nanoGPT's `from_pretrained` and big_vision's loaders do).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import LoadError
from .model import Siglip, TowerConfig
from .registry import find_spec

CONFIG = "config.json"
PREPROCESSOR = "preprocessor_config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE = "pytorch_model.bin"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # "namespace/name", as huggingface_hub validates it
HUB_FILES = ["*.json", "*.safetensors", "spiece.model", "tokenizer.model"]

# transformers' model_type -> which towers the checkpoint holds
MODEL_TYPES = {"siglip": ("vision", "text"), "siglip_vision_model": ("vision",), "siglip_text_model": ("text",)}

# -- SigLIP 2 NaFlex ("siglip2" model types) --------------------------------------------------------------------
# transformers' Siglip2Model keeps SigLIP's weight names; only the vision config differs (see naflex_vision_fields):
# embeddings.patch_embedding is an nn.Linear over (p, p, C) patches and the position grid is num_patches long.
NAFLEX_MODEL_TYPES = {"siglip2": ("vision", "text"), "siglip2_vision_model": ("vision",),
                      "siglip2_text_model": ("text",)}


def naflex_vision_fields(vision: dict, where: Path) -> dict:
    """A Siglip2VisionConfig dict -> our TowerConfig fields: the square position grid of `num_patches` becomes
    image_size = grid * patch_size (so `TowerConfig.grid` is its side), and `variable_resolution` is set."""
    num_patches = vision.get("num_patches", 256)  # Siglip2VisionConfig's default
    grid = math.isqrt(num_patches) if isinstance(num_patches, int) and num_patches > 0 else 0
    if grid * grid != num_patches:
        raise LoadError(f"{where}: vision_config.num_patches {num_patches!r} is not a square number of patches")
    patch_size = vision.get("patch_size", 16)
    if not isinstance(patch_size, int):  # transformers allows a (p, p) pair; the checkpoints use one int
        raise LoadError(f"{where}: vision_config.patch_size {patch_size!r}: only square patches (one int) supported")
    return {**vision, "image_size": grid * patch_size, "patch_size": patch_size, "variable_resolution": True}


def naflex_weight_names(weights: dict[str, torch.Tensor], model_type: str) -> dict[str, torch.Tensor]:
    """transformers 5's single-tower Siglip2VisionModel / Siglip2TextModel save their weights without the tower
    prefix (`embeddings.patch_embedding.weight`, not `vision_model.embeddings...`); add it back."""
    prefix = {"siglip2_vision_model": "vision_model.", "siglip2_text_model": "text_model."}.get(model_type)
    if prefix is None or any(k.startswith(prefix) for k in weights):
        return weights
    return {prefix + k: v for k, v in weights.items()}


MODEL_TYPES.update(NAFLEX_MODEL_TYPES)

# Per-block weights: transformers suffix -> ours. q/k/v are fused into one matrix (see `_fuse`).
BLOCK_KEYS = {
    "layer_norm1": "ln1",
    "layer_norm2": "ln2",
    "self_attn.out_proj": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
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
# Buffers transformers may save that carry no learned state.
IGNORED_SUFFIXES = ("embeddings.position_ids",)


@dataclass
class Checkpoint:
    """What a folder holds, resolved and validated."""

    folder: Path
    config: dict
    vision: TowerConfig | None
    text: TowerConfig | None


def resolve(name_or_path: str | os.PathLike, *, revision: str | None = None) -> Path:
    """A local folder, a known short name or a hub id -> a local folder (huggingface_hub cache; honours HF_HUB_OFFLINE)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise LoadError(f"{path}: not a folder (expected a checkpoint folder with {CONFIG})")
    name = str(name_or_path)
    spec = find_spec(name)
    repo_id = spec.hub_id if spec else name
    if not HUB_ID.fullmatch(repo_id):
        raise LoadError(f"{name}: no such folder, and not a known model or hub id (see `siglite list`)")
    from huggingface_hub import snapshot_download  # network/cache access only when asked for a hub id

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_FILES))
    except Exception as e:  # offline, missing repo, auth: say which id and why in one line
        raise LoadError(f"{repo_id}: cannot fetch from the hub ({type(e).__name__}: {str(e).splitlines()[0]})") from e


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise LoadError(f"{path}: missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LoadError(f"{path}: not valid JSON ({e})") from e


def read_checkpoint(folder: Path) -> Checkpoint:
    """Read and check config.json: which towers, at which shapes."""
    config = read_json(folder / CONFIG)
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise LoadError(
            f"{folder / CONFIG}: model_type {model_type!r} is not a SigLIP model (expected one of {sorted(MODEL_TYPES)})"
        )
    towers = MODEL_TYPES[model_type]
    try:
        vision_dict = config.get("vision_config", config)
        if model_type in NAFLEX_MODEL_TYPES and "vision" in towers:
            vision_dict = naflex_vision_fields(vision_dict, folder / CONFIG)
        vision = TowerConfig.from_dict(vision_dict) if "vision" in towers else None
        text = TowerConfig.from_dict(config.get("text_config", config)) if "text" in towers else None
    except TypeError as e:
        raise LoadError(f"{folder / CONFIG}: incomplete tower config ({e})") from e
    return Checkpoint(folder, config, vision, text)


def read_weights(folder: Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """safetensors (single or sharded); a pickle checkpoint only when the caller opts in, since unpickling runs code."""
    from safetensors.torch import load_file

    if (folder / SAFETENSORS).is_file():
        files = [folder / SAFETENSORS]
    elif (folder / SAFETENSORS_INDEX).is_file():
        index = read_json(folder / SAFETENSORS_INDEX)
        files = [folder / f for f in sorted(set(index.get("weight_map", {}).values()))]
    elif (folder / PICKLE).is_file():
        if not allow_pickle:
            raise LoadError(
                f"{folder / PICKLE}: pickle checkpoints can run code when loaded and are refused; "
                "convert to safetensors or pass allow_pickle=True if you trust the source"
            )
        return torch.load(folder / PICKLE, map_location="cpu", weights_only=True)
    else:
        raise LoadError(f"{folder}: no weights ({SAFETENSORS} missing)")
    weights = {}
    for f in files:
        try:
            weights.update(load_file(f))
        except Exception as e:
            raise LoadError(f"{f}: cannot read safetensors ({e})") from e
    return weights


def _tower_map(prefix: str, ours: str, cfg: TowerConfig, extra: dict[str, str]) -> dict[str, str]:
    """transformers name -> our name for one tower (weights and biases)."""
    names = {}
    for i in range(cfg.num_hidden_layers):
        for theirs, mine in BLOCK_KEYS.items():
            names[f"{prefix}.encoder.layers.{i}.{theirs}"] = f"{ours}.blocks.{i}.{mine}"
    for theirs, mine in extra.items():
        names[f"{prefix}.{theirs}"] = f"{ours}.{mine}"
    return {f"{k}.{p}": f"{v}.{p}" for k, v in names.items() for p in ("weight", "bias")}


def convert_state_dict(hf: dict[str, torch.Tensor], ckpt: Checkpoint) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Map a transformers SiglipModel state dict to ours. Returns (our state dict, the transformers keys used)."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(key: str) -> torch.Tensor | None:
        if key in hf:
            used.add(key)
            return hf[key]
        return None

    def fuse(parts: list[str], ours: str) -> None:
        """Concatenate separate projections (q, k, v) along the output dim into one of our Linear layers."""
        for p in ("weight", "bias"):
            tensors = [take(f"{name}.{p}") for name in parts]
            if all(t is not None for t in tensors):
                out[f"{ours}.{p}"] = torch.cat(tensors, dim=0)

    maps = {}
    if ckpt.vision is not None:
        v = "vision_model"
        maps.update(_tower_map(v, "vision", ckpt.vision, VISION_KEYS))
        for i in range(ckpt.vision.num_hidden_layers):
            fuse([f"{v}.encoder.layers.{i}.self_attn.{x}_proj" for x in "qkv"], f"vision.blocks.{i}.attn.qkv")
        pos = take(f"{v}.embeddings.position_embedding.weight")
        if pos is not None:
            out["vision.pos_embed"] = pos[None]  # (T, D) -> (1, T, D)
        if ckpt.vision.vision_use_head:
            probe = take(f"{v}.head.probe")
            if probe is not None:
                out["vision.head.probe"] = probe
            # nn.MultiheadAttention keeps q, k, v in one (3D, D) in_proj: q goes to the probe, k/v to the tokens
            w, b = take(f"{v}.head.attention.in_proj_weight"), take(f"{v}.head.attention.in_proj_bias")
            if w is not None and b is not None:
                D = ckpt.vision.hidden_size
                out["vision.head.q.weight"], out["vision.head.kv.weight"] = w[:D], w[D:]
                out["vision.head.q.bias"], out["vision.head.kv.bias"] = b[:D], b[D:]
    if ckpt.text is not None:
        t = "text_model"
        maps.update(_tower_map(t, "text", ckpt.text, TEXT_KEYS))
        for i in range(ckpt.text.num_hidden_layers):
            fuse([f"{t}.encoder.layers.{i}.self_attn.{x}_proj" for x in "qkv"], f"text.blocks.{i}.attn.qkv")
        pos = take(f"{t}.embeddings.position_embedding.weight")
        if pos is not None:
            out["text.pos_embed"] = pos[None]
    for name in ("logit_scale", "logit_bias"):
        value = take(name)
        if value is not None:
            out[name] = value.reshape(1)
    for theirs, mine in maps.items():
        value = take(theirs)
        if value is not None:
            out[mine] = value
    return out, used


def build_model(ckpt: Checkpoint, hf_weights: dict[str, torch.Tensor]) -> Siglip:
    """Instantiate our model and fill every parameter; any missing, unused or mis-shaped weight is an error."""
    with torch.device("meta"):
        model = Siglip(ckpt.vision, ckpt.text)
    expected = model.state_dict()
    # A vision- or text-only SigLIP checkpoint stores its tower under the same prefix as the full model.
    hf_weights = {k: v for k, v in hf_weights.items() if not k.endswith(IGNORED_SUFFIXES)}
    hf_weights = naflex_weight_names(hf_weights, ckpt.config.get("model_type"))
    ours, used = convert_state_dict(hf_weights, ckpt)
    where = ckpt.folder
    unused = sorted(set(hf_weights) - used)
    if unused:
        raise LoadError(f"{where}: {len(unused)} unused weight(s) in the checkpoint: {', '.join(unused[:5])}")
    optional = {"logit_scale", "logit_bias"} if ckpt.vision is None or ckpt.text is None else set()
    missing = sorted(set(expected) - set(ours) - optional)
    if missing:
        raise LoadError(f"{where}: {len(missing)} missing weight(s): {', '.join(missing[:5])}")
    for name, tensor in ours.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise LoadError(
                f"{where}: weight {name} has shape {tuple(tensor.shape)}, config.json implies {tuple(expected[name].shape)}"
            )
    model.load_state_dict({k: v.float() for k, v in ours.items()}, strict=False, assign=True)
    for name in optional - set(ours):  # absent in single-tower checkpoints
        setattr(model, name, torch.nn.Parameter(torch.zeros(1)))
    return model.eval()


def load_model(folder: Path, *, allow_pickle: bool = False) -> tuple[Checkpoint, Siglip]:
    ckpt = read_checkpoint(folder)
    return ckpt, build_model(ckpt, read_weights(folder, allow_pickle=allow_pickle))


def to_hf_state_dict(model: Siglip) -> dict[str, torch.Tensor]:
    """Our state dict -> transformers SiglipModel names (the inverse of `convert_state_dict`), for saving checkpoints
    that transformers loads too."""
    ours = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    hf: dict[str, torch.Tensor] = {}
    towers = [("vision_model", "vision", model.vision, VISION_KEYS), ("text_model", "text", model.text, TEXT_KEYS)]
    for prefix, name, tower, extra in towers:
        if tower is None:
            continue
        cfg = tower.cfg
        for theirs, mine in _tower_map(prefix, name, cfg, extra).items():
            if mine in ours:
                hf[theirs] = ours[mine]
        for i in range(cfg.num_hidden_layers):
            for p in ("weight", "bias"):
                for x, part in zip("qkv", ours[f"{name}.blocks.{i}.attn.qkv.{p}"].chunk(3)):
                    hf[f"{prefix}.encoder.layers.{i}.self_attn.{x}_proj.{p}"] = part.contiguous()
        pos = "embeddings.position_embedding.weight"
        hf[f"{prefix}.{pos}"] = ours[f"{name}.pos_embed"][0]
    if model.vision is not None and model.vision.head is not None:
        hf["vision_model.head.probe"] = ours["vision.head.probe"]
        for p in ("weight", "bias"):
            hf[f"vision_model.head.attention.in_proj_{p}"] = torch.cat([ours[f"vision.head.q.{p}"],
                                                                       ours[f"vision.head.kv.{p}"]])
    if model.vision is not None and model.text is not None:
        hf["logit_scale"], hf["logit_bias"] = ours["logit_scale"], ours["logit_bias"]
    return hf
