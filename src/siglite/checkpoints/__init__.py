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
import math
import os
import re
from pathlib import Path

import torch

from ..config import family_of_model_type, known_model_types
from .. import jsonio
from ..errors import LoadError
from ..registry import Spec, find_spec
from .base import (BLOCK_KEYS, CONFIG, SAFETENSORS, Checkpoint, KeyMap, map_blocks,  # noqa: F401 (re-exported)
                   plain_state_dict, read_json_object, unmap_blocks)

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


# -- writing: our model as a hub-layout folder; random weights at a real architecture's shape -----------------------


def random_model(spec: Spec, *, seed: int = 0, vision_layers: int | None = None, text_layers: int | None = None,
                 text: bool = True):
    """A model at `spec`'s shape and family with random weights (normal, std 1/sqrt(fan_in); LayerNorm gains near 1).

    vision_layers/text_layers override the depth (quick checks at full width); text=False builds the vision tower only.
    """
    from ..model import Siglip

    fam = spec.family_config
    vcfg = spec.vision_config_with(num_hidden_layers=vision_layers) if vision_layers else spec.vision_config
    tcfg = spec.text_config_with(num_hidden_layers=text_layers) if text_layers else spec.text_config
    gen = torch.Generator().manual_seed(seed)
    model = Siglip(vcfg, tcfg if text else None, logits=fam.logits)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.02, generator=gen)
            elif ".ln" in name or name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif p.dim() >= 2 or "probe" in name or "pos_embed" in name or "cls_token" in name:
                fan_in = p[0].numel() if p.dim() >= 2 and "embed" not in name and "token" not in name else p.shape[-1]
                p.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=gen)
        model.logit_scale.fill_(math.log(10.0) if fam.logits == "sigmoid" else math.log(100.0))
        model.logit_bias.fill_(-10.0 if fam.logits == "sigmoid" else 0.0)
    return model.eval()


def save_checkpoint(model, folder: str | Path, spec: Spec | None = None, image_config: dict | None = None) -> Path:
    """Write `model` as a hub-layout folder in its family's transformers format (config.json, model.safetensors in
    transformers' key names, preprocessor_config.json and processor_config.json), loadable by siglite and transformers alike. Tokenizer files
    are the caller's (see tests/conftest.py)."""
    from safetensors.torch import save_file

    from .layout import write_processor_files

    fmt = format_module(_format_of(model))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(fmt.hf_config(model), indent=2))
    save_file(fmt.to_hf(model), folder / "model.safetensors")
    if image_config is None and spec is not None:
        image_config = spec.hf_preprocessor_config()
    if image_config is not None:  # both preprocessor_config.json (4.x) and processor_config.json (5.x)
        write_processor_files(folder, image_config,
                              processor_class=image_config.get("processor_class", "SiglipProcessor"))
    return folder


__all__ = ["Checkpoint", "FORMATS", "resolve", "read_json", "read_checkpoint", "read_weights", "build_model",
           "load_model", "to_hf_state_dict", "random_model", "save_checkpoint", "detect_format",
           "format_module"]
