"""Checkpoint folders -> our model: format detection, weight reading, strict loading, and saving.

A folder's format is told by the files it has: ``config.json`` whose ``model_type`` belongs to a family
(`config.family_of_model_type`) is that family's transformers format (``transformers_siglip``,
``transformers_clip``); ``open_clip_config.json`` is the open_clip format. Each format is one module here with an
explicit key map in both directions:

* ``read_config(folder, config) -> Checkpoint`` — which towers, at which shapes, with which logits;
* ``to_ours(weights, ckpt) -> (state_dict, used_keys)`` — their names -> ours;
* ``to_hf(model) -> weights`` and ``hf_config(model) -> dict`` — ours -> theirs (for saving).

Loading is strict (as nanoGPT's `from_pretrained` and big_vision's loaders): every missing, unused or mis-shaped
weight is an error that names it.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import TextConfig, VisionConfig, family_of_model_type, known_model_types
from .. import jsonio
from ..errors import LoadError
from ..registry import find_spec

CONFIG = "config.json"
OPEN_CLIP_CONFIG = "open_clip_config.json"
PREPROCESSOR = "preprocessor_config.json"
PROCESSOR = "processor_config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE = "pytorch_model.bin"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # "namespace/name", as huggingface_hub validates it
HUB_FILES = ["*.json", "*.safetensors", "spiece.model", "tokenizer.model", "vocab.json", "merges.txt"]

# format name -> module (imported when a folder needs it). open_clip's module is added by the checkpoint-layout work.
FORMATS = {
    "transformers_siglip": "siglite.checkpoints.transformers_siglip",
    "transformers_clip": "siglite.checkpoints.transformers_clip",
    "open_clip": "siglite.checkpoints.open_clip",
}


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


def format_module(name: str):
    """The module of checkpoint format `name`."""
    if name not in FORMATS:
        raise LoadError(f"unknown checkpoint format {name!r}; known: {', '.join(FORMATS)}")
    try:
        return importlib.import_module(FORMATS[name])
    except ModuleNotFoundError as e:
        raise LoadError(f"the {name} checkpoint format is not supported by this siglite ({e})") from e


def detect_format(folder: Path) -> tuple[str, dict]:
    """Tell a folder's format from its files (`layout.detect`). Returns (format name, transformers-style config)."""
    from .layout import OPEN_CLIP, detect

    if detect(folder) == OPEN_CLIP:
        from .open_clip import transformers_config

        return "open_clip", transformers_config(folder)
    config = read_json(folder / CONFIG)
    model_type = config.get("model_type")
    fam = family_of_model_type(model_type)
    if fam is None:
        raise LoadError(f"{folder / CONFIG}: model_type {model_type!r} is not a supported model "
                        f"(expected one of {known_model_types()})")
    return fam.checkpoint_format, config


def resolve(name_or_path: str | os.PathLike, *, revision: str | None = None) -> Path:
    """A local folder, a known short name or a hub id -> a local folder (huggingface_hub cache; honours
    HF_HUB_OFFLINE)."""
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
    """A checkpoint's JSON file (`jsonio.read_json`: one-line `LoadError` naming the file)."""
    return jsonio.read_json(path)


def read_checkpoint(folder: Path) -> Checkpoint:
    """Detect the format and read the config: which towers, at which shapes, with which logits."""
    folder = Path(folder)
    name, config = detect_format(folder)
    return format_module(name).read_config(folder, config)


def read_weights(folder: Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """safetensors (single or sharded); a pickle checkpoint only when the caller opts in, since unpickling runs code.
    An open_clip folder's weights come back in transformers SigLIP names (`open_clip.read_weights`)."""
    from safetensors.torch import load_file

    from .layout import OPEN_CLIP, detect

    if detect(folder) == OPEN_CLIP:
        from .open_clip import read_weights as read_open_clip

        return read_open_clip(folder, allow_pickle=allow_pickle)

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


def build_model(ckpt: Checkpoint, weights: dict[str, torch.Tensor]):
    """Instantiate our model and fill every parameter; any missing, unused or mis-shaped weight is an error."""
    from ..model import Siglip

    with torch.device("meta"):
        model = Siglip(ckpt.vision, ckpt.text, logits=ckpt.logits)
    expected = model.state_dict()
    ours, used = format_module(ckpt.format).to_ours(weights, ckpt)
    where = ckpt.folder
    unused = sorted(set(weights) - used)
    if unused:
        raise LoadError(f"{where}: {len(unused)} unused weight(s) in the checkpoint: {', '.join(unused[:5])}")
    missing = sorted(set(expected) - set(ours) - ckpt.optional)
    if missing:
        raise LoadError(f"{where}: {len(missing)} missing weight(s): {', '.join(missing[:5])}")
    for name, tensor in ours.items():
        if name not in expected:
            raise LoadError(f"{where}: weight {name} does not fit the model config.json describes")
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise LoadError(
                f"{where}: weight {name} has shape {tuple(tensor.shape)}, "
                f"config.json implies {tuple(expected[name].shape)}"
            )
    # Copies in fresh (aligned) memory: a view into the mmap'd safetensors file can sit at any byte offset, and CPU GEMM
    # kernels round differently on misaligned operands (~3e-7), so the same weights read from two files would not
    # give bitwise-equal outputs (siglite convert's round trip checks |Δ| = 0).
    model.load_state_dict({k: v.to(torch.float32, copy=True) for k, v in ours.items()}, strict=False, assign=True)
    for name in ckpt.optional - set(ours):  # absent by design (single-tower checkpoints, CLIP's logit_bias)
        setattr(model, name, torch.nn.Parameter(torch.zeros(1)))
    return model.eval()


def load_model(folder: Path, *, allow_pickle: bool = False):
    """Read a folder's config and weights -> (Checkpoint, our model in eval mode, float32 on CPU)."""
    ckpt = read_checkpoint(folder)
    return ckpt, build_model(ckpt, read_weights(folder, allow_pickle=allow_pickle))


def to_hf_state_dict(model) -> dict[str, torch.Tensor]:
    """Our state dict -> the names of the model's transformers class (the inverse of loading)."""
    return format_module(_format_of(model)).to_hf(model)


def _format_of(model) -> str:
    """The checkpoint format of the family whose data describes `model` (logit kind and tower architecture; the
    projection flag aside, which single-tower classes override)."""
    from ..config import families

    def matches(fam, tower, arch) -> bool:
        return tower is None or all(tower.cfg.arch()[k] == v for k, v in arch.items() if k != "projection")

    for fam in families().values():
        if fam.logits == model.logit_kind and matches(fam, model.vision, fam.vision["arch"]) \
                and matches(fam, model.text, fam.text["arch"]):
            return fam.checkpoint_format
    raise LoadError(f"no model family describes this model (logits {model.logit_kind!r}); cannot save it")


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


from .hub import random_model, save_checkpoint  # noqa: E402  (the library's writers, after the readers they use)

__all__ = ["Checkpoint", "FORMATS", "resolve", "read_json", "read_checkpoint", "read_weights", "build_model",
           "load_model", "to_hf_state_dict", "random_model", "save_checkpoint", "detect_format",
           "format_module"]
