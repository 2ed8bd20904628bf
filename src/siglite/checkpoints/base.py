"""What every checkpoint format module shares: the `Checkpoint` record, the `KeyMap` that builds our state dict from
theirs, the per-block key map of transformers' ViT-style encoders, and the JSON reader. Format modules import this,
never the package (`siglite.checkpoints`), so the package can dispatch to them without an import cycle."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import TextConfig, VisionConfig
from ..errors import LoadError
from ..jsonio import read_json

CONFIG = "config.json"
SAFETENSORS = "model.safetensors"


def read_json_object(path: Path) -> dict:
    """A JSON file that must hold an object (`jsonio.read_json`, then the type checked)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise LoadError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


@dataclass
class Checkpoint:
    """What a folder holds, resolved and validated.

    Attributes:
        folder: the checkpoint folder.
        config: its parsed config file.
        vision, text: tower configs (None for a tower the checkpoint lacks).
        format: a key of FORMATS.
        logits: "sigmoid" or "softmax".
        optional: our parameter names the format may leave out (zero-filled when absent, e.g. logit_bias of CLIP).
    """

    folder: Path
    config: dict
    vision: VisionConfig | None
    text: TextConfig | None
    format: str = "transformers_siglip"
    logits: str = "sigmoid"
    optional: set = field(default_factory=set)


class KeyMap:
    """Builds our state dict from a checkpoint's, remembering which of its keys were used."""

    def __init__(self, weights: dict[str, torch.Tensor], *, bare: str | None = None):
        """`bare`: a tower prefix ("vision_model") a single-tower checkpoint may store its keys without (as
        transformers 5 saves CLIPVisionModel / CLIPTextModel); `take` then finds "vision_model.x" under "x" too."""
        self.weights = weights
        self.bare = bare
        self.out: dict[str, torch.Tensor] = {}
        self.used: set[str] = set()

    def take(self, key: str) -> torch.Tensor | None:
        if key not in self.weights and self.bare and key.startswith(self.bare + "."):
            key = key[len(self.bare) + 1:]
        if key in self.weights:
            self.used.add(key)
            return self.weights[key]
        return None

    def put(self, theirs: str, ours: str, fn=None) -> None:
        """Copy one tensor if present (`fn` reshapes it)."""
        value = self.take(theirs)
        if value is not None:
            self.out[ours] = fn(value) if fn else value

    def linear(self, theirs: str, ours: str) -> None:
        """weight and bias of one Linear / LayerNorm / Conv."""
        for p in ("weight", "bias"):
            self.put(f"{theirs}.{p}", f"{ours}.{p}")

    def fuse(self, parts: list[str], ours: str) -> None:
        """Concatenate separate projections (q, k, v) along the output dim into one of our Linear layers."""
        for p in ("weight", "bias"):
            tensors = [self.take(f"{name}.{p}") for name in parts]
            if all(t is not None for t in tensors):
                self.out[f"{ours}.{p}"] = torch.cat(tensors, dim=0)

    def ignore(self, suffixes: tuple[str, ...]) -> None:
        """Mark buffers that carry no learned state as used (e.g. `embeddings.position_ids`)."""
        self.used.update(k for k in self.weights if k.endswith(suffixes))


# Per-block weights shared by transformers' ViT-style encoders (SiglipEncoderLayer, CLIPEncoderLayer):
# their suffix -> ours. q/k/v are fused into one matrix.
BLOCK_KEYS = {
    "layer_norm1": "ln1",
    "layer_norm2": "ln2",
    "self_attn.out_proj": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def map_blocks(km: KeyMap, prefix: str, ours: str, layers: int) -> None:
    """`{prefix}.encoder.layers.{i}` -> `{ours}.blocks.{i}` for every block."""
    for i in range(layers):
        theirs = f"{prefix}.encoder.layers.{i}"
        for t, o in BLOCK_KEYS.items():
            km.linear(f"{theirs}.{t}", f"{ours}.blocks.{i}.{o}")
        km.fuse([f"{theirs}.self_attn.{x}_proj" for x in "qkv"], f"{ours}.blocks.{i}.attn.qkv")


def unmap_blocks(ours: dict, hf: dict, prefix: str, name: str, layers: int) -> None:
    """Inverse of `map_blocks`: split qkv back into q/k/v."""
    for i in range(layers):
        theirs = f"{prefix}.encoder.layers.{i}"
        for t, o in BLOCK_KEYS.items():
            for p in ("weight", "bias"):
                hf[f"{theirs}.{t}.{p}"] = ours[f"{name}.blocks.{i}.{o}.{p}"]
        for p in ("weight", "bias"):
            for x, part in zip("qkv", ours[f"{name}.blocks.{i}.attn.qkv.{p}"].chunk(3)):
                hf[f"{theirs}.self_attn.{x}_proj.{p}"] = part.contiguous()


def plain_state_dict(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}


def single_tower_prefix(ckpt: Checkpoint) -> str | None:
    """The tower prefix ("vision_model" / "text_model") a single-tower checkpoint may store its keys without:
    transformers 5's SiglipVisionModel, CLIPTextModel, ... hold the tower's modules directly, so their
    save_pretrained writes unprefixed keys; transformers loads both forms, and so do we. None for both towers."""
    if ckpt.vision is not None and ckpt.text is not None:
        return None
    return "vision_model" if ckpt.vision is not None else "text_model"
