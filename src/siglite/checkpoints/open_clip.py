"""The open_clip / timm hub format: open_clip_config.json + open_clip_model.safetensors (or *_pytorch_model.bin).

This is how timm/ViT-B-16-SigLIP, timm/ViT-SO400M-14-SigLIP-384, the SigLIP 2 open_clip repos and fine-tunes published
with open_clip's `push_to_hf_hub` ship. A folder is converted, explicitly and with every shape checked, to what a
transformers `SiglipModel` checkpoint holds (config dict + state dict in transformers' names); the transformers build
path (`siglite.checkpoints.build_model`) then reports missing and unused weights as for any checkpoint.

References:
* open_clip `src/open_clip/push_to_hf_hub.py` (`save_for_hf`, `save_config_for_hf`): the files and their fields;
  `model.py` (`CLIPVisionCfg`, `CLIPTextCfg`, `_build_text_tower`), `transformer.py` (`TextTransformer`,
  `ResidualAttentionBlock`), `timm_model.py` (`TimmModel`), `tokenizer.py` (`HFTokenizer`, `canonicalize_text`).
* timm `models/vision_transformer.py` (`vit_*_siglip_*` model functions: width, depth, heads, MLP ratio, activation;
  `Block`, `Attention` with fused qkv) and `layers/attention_pool.py` (`AttentionPoolLatent`).
* transformers `models/siglip/convert_siglip_to_hf.py`: the big_vision -> transformers names on the other side.
"""

from __future__ import annotations

import html
import re
import string
from pathlib import Path

import torch

from ..errors import LoadError
from .base import read_json_object

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")

SAFETENSORS, PICKLE = OPEN_CLIP_WEIGHTS
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")

# timm's SigLIP ViT trunks, by the size token of their name (`vit_{size}_patch{P}_siglip[_gap]_{res}`): width, depth,
# heads, MLP ratio and MLP activation, from the `vit_*_siglip_*` functions in timm/models/vision_transformer.py.
# timm builds the MLP with `int(width * mlp_ratio)` hidden units and, unless the function names another `act_layer`,
# exact GELU (nn.GELU) -- not the tanh form transformers' SigLIP configs use.
TIMM_SIGLIP_SIZES: dict[str, dict] = {
    "base": dict(width=768, depth=12, heads=12, mlp_ratio=4.0, act="gelu"),
    "large": dict(width=1024, depth=24, heads=16, mlp_ratio=4.0, act="gelu"),
    "so400m": dict(width=1152, depth=27, heads=16, mlp_ratio=3.7362, act="gelu"),
    "giantopt": dict(width=1536, depth=40, heads=16, mlp_ratio=4.0, act="gelu_pytorch_tanh"),  # act_layer='gelu_tanh'
}
TIMM_NAME = re.compile(r"vit_(?P<size>[a-z0-9]+)_patch(?P<patch>\d+)_siglip(?P<gap>_gap)?_(?P<res>\d+)")
INTERPOLATIONS = {"bicubic": 3, "bilinear": 2, "nearest": 0, "lanczos": 1}  # torchvision name -> PIL code
EXACT_GELU, TANH_GELU = "gelu", "gelu_pytorch_tanh"


def _cfg(folder: Path) -> tuple[dict, dict, dict]:
    """(model_cfg, vision_cfg, text_cfg) of open_clip_config.json."""
    path = folder / OPEN_CLIP_CONFIG
    data = read_json_object(path)
    model_cfg = data.get("model_cfg")
    if not isinstance(model_cfg, dict):
        raise LoadError(f"{path}: no 'model_cfg' object")
    return model_cfg, model_cfg.get("vision_cfg") or {}, model_cfg.get("text_cfg") or {}


def _vision_config(path: Path, model_cfg: dict, vision: dict) -> dict:
    name = vision.get("timm_model_name")
    if not name:
        raise LoadError(f"{path}: vision_cfg has no timm_model_name (only timm SigLIP trunks are supported)")
    m = TIMM_NAME.fullmatch(name)
    if m is None or m["size"] not in TIMM_SIGLIP_SIZES:
        raise LoadError(f"{path}: timm model {name!r} is not a known SigLIP trunk "
                        f"(vit_{{{'|'.join(TIMM_SIGLIP_SIZES)}}}_patchN_siglip_RES)")
    if m["gap"] or vision.get("timm_pool", "map") != "map":
        raise LoadError(f"{path}: timm model {name!r} with pool {vision.get('timm_pool')!r}: only the "
                        "attention-pooling ('map') SigLIP trunks are supported")
    if vision.get("timm_proj", "none") not in ("none", "", None):
        raise LoadError(f"{path}: vision_cfg.timm_proj {vision.get('timm_proj')!r} is not supported "
                        "(SigLIP uses 'none')")
    size = TIMM_SIGLIP_SIZES[m["size"]]
    image_size = vision.get("image_size", int(m["res"]))
    if not isinstance(image_size, int):  # open_clip allows (H, W); SigLIP trunks are square
        if len(set(image_size)) != 1:
            raise LoadError(f"{path}: vision_cfg.image_size {image_size} is not square")
        image_size = image_size[0]
    if model_cfg.get("embed_dim") not in (None, size["width"]):
        raise LoadError(f"{path}: embed_dim {model_cfg.get('embed_dim')} differs from the {name} width {size['width']} "
                        "(timm_proj 'none' passes the pooled trunk output through)")
    return {
        "model_type": "siglip_vision_model", "hidden_size": size["width"],
        "intermediate_size": int(size["width"] * size["mlp_ratio"]), "num_hidden_layers": size["depth"],
        "num_attention_heads": size["heads"], "image_size": image_size, "patch_size": int(m["patch"]),
        "num_channels": 3, "hidden_act": size["act"], "layer_norm_eps": 1e-6, "vision_use_head": True,
    }


def _text_config(path: Path, model_cfg: dict, text: dict) -> dict:
    # Features of open_clip's TextTransformer that SigLIP does not use and our text tower does not have.
    checks = {"no_causal_mask": (True, "SigLIP text attention is bidirectional"),
              "pool_type": ("last", "SigLIP pools the last position"),
              "embed_cls": (False, "no class token"), "final_ln_after_pool": (False, "final LayerNorm before pooling"),
              "ls_init_value": (None, "no layer scale"),
              "hf_model_name": (None, "an open_clip TextTransformer, not a transformers text model")}
    defaults = {"no_causal_mask": False, "pool_type": "argmax", "embed_cls": False, "final_ln_after_pool": False,
                "proj_type": "linear", "ls_init_value": None, "hf_model_name": None}  # CLIPTextCfg defaults
    for key, (want, why) in checks.items():
        if text.get(key, defaults[key]) != want:
            raise LoadError(f"{path}: text_cfg.{key} = {text.get(key, defaults[key])!r} is not supported ({why})")
    for key in ("qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner", "scale_attn", "scale_fc"):
        if text.get(key):
            raise LoadError(f"{path}: text_cfg.{key} is not supported")
    if text.get("proj_type", "linear") not in ("linear", "none"):
        raise LoadError(f"{path}: text_cfg.proj_type {text.get('proj_type')!r} is not supported ('linear' or 'none')")
    act = (text.get("act_kwargs") or {}).get("approximate", "none")
    if act not in ("none", "tanh"):
        raise LoadError(f"{path}: text_cfg.act_kwargs.approximate {act!r} is not a GELU form")
    width = text.get("width", 512)
    return {
        "model_type": "siglip_text_model", "hidden_size": width,
        "intermediate_size": int(width * text.get("mlp_ratio", 4.0)), "num_hidden_layers": text.get("layers", 12),
        "num_attention_heads": text.get("heads", 8), "vocab_size": text.get("vocab_size", 49408),
        "max_position_embeddings": text.get("context_length", 77),
        # proj_type "none" (ViT-SO400M-16-SigLIP-i18n-256): the pooled ln_final output is the embedding
        "projection_size": width if text.get("proj_type", "linear") == "none" else model_cfg.get("embed_dim"),
        # open_clip builds nn.GELU(**act_kwargs) and LayerNorm(eps=norm_kwargs.eps or torch's 1e-5)
        "hidden_act": TANH_GELU if act == "tanh" else EXACT_GELU,
        "layer_norm_eps": (text.get("norm_kwargs") or {}).get("eps", 1e-5),
    }


def transformers_config(folder: str | Path) -> dict:
    """open_clip_config.json -> the config.json a transformers SiglipModel of the same function would have."""
    folder = Path(folder)
    path = folder / OPEN_CLIP_CONFIG
    model_cfg, vision, text = _cfg(folder)
    if not model_cfg.get("custom_text", False) and "init_logit_bias" not in model_cfg:
        raise LoadError(f"{path}: not a SigLIP model (no init_logit_bias: an open_clip CLIP model?)")
    return {
        "model_type": "siglip", "architectures": ["SiglipModel"],
        "vision_config": _vision_config(path, model_cfg, vision),
        "text_config": _text_config(path, model_cfg, text),
    }


def image_processor(folder: str | Path) -> dict:
    """preprocess_cfg (+ the vision image size) -> SiglipImageProcessor settings.

    open_clip's `image_transform` with resize_mode "squash" resizes to (S, S) with torchvision's Resize on the PIL image
    (= PIL resize with the named filter), then ToTensor and Normalize: what SiglipImageProcessor does."""
    folder = Path(folder)
    path = folder / OPEN_CLIP_CONFIG
    pp = read_json_object(path).get("preprocess_cfg") or {}
    size = transformers_config(folder)["vision_config"]["image_size"]
    interpolation = pp.get("interpolation", "bicubic")
    if interpolation not in INTERPOLATIONS:
        raise LoadError(f"{path}: preprocess_cfg.interpolation {interpolation!r} is not one of "
                        f"{sorted(INTERPOLATIONS)}")
    if pp.get("resize_mode", "squash") != "squash":
        raise LoadError(f"{path}: preprocess_cfg.resize_mode {pp.get('resize_mode')!r} is not supported "
                        "(SigLIP checkpoints use 'squash')")
    return {
        "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
        "resample": INTERPOLATIONS[interpolation], "size": {"height": size, "width": size},
        # open_clip's OPENAI defaults when preprocess_cfg has no mean/std (model.visual.image_mean is None)
        "image_mean": list(pp.get("mean", (0.48145466, 0.4578275, 0.40821073))),
        "image_std": list(pp.get("std", (0.26862954, 0.26130258, 0.27577711))),
    }


def read_open_clip_weights(folder: Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The open_clip state dict (open_clip's own key names)."""
    if (folder / SAFETENSORS).is_file():
        from safetensors.torch import load_file

        try:
            return load_file(folder / SAFETENSORS)
        except Exception as e:
            raise LoadError(f"{folder / SAFETENSORS}: cannot read safetensors ({e})") from e
    if (folder / PICKLE).is_file():
        if not allow_pickle:
            raise LoadError(f"{folder / PICKLE}: pickle checkpoints can run code when loaded and are refused; "
                            "pass allow_pickle=True if you trust the source")
        state = torch.load(folder / PICKLE, map_location="cpu", weights_only=True)
        return state.get("state_dict", state)
    raise LoadError(f"{folder}: no weights ({SAFETENSORS} or {PICKLE} missing)")


def to_transformers(oc: dict[str, torch.Tensor], config: dict, where: Path, *,
                    text_proj_type: str = "linear") -> dict[str, torch.Tensor]:
    """open_clip / timm names -> transformers SiglipModel names, explicitly, every shape checked.

    Keys left unmapped are passed through under their open_clip name so the build path reports them as unused.
    """
    vc, tc = config["vision_config"], config["text_config"]
    src = dict(oc)
    out: dict[str, torch.Tensor] = {}

    def take(key: str, shape: tuple) -> torch.Tensor:
        if key not in src:
            raise LoadError(f"{where}: missing weight {key}")
        t = src.pop(key)
        if tuple(t.shape) != tuple(shape):
            raise LoadError(f"{where}: weight {key} has shape {tuple(t.shape)}, {OPEN_CLIP_CONFIG} implies {shape}")
        return t

    def linear(theirs: str, ours: str, n_out: int, n_in: int) -> None:
        out[f"{ours}.weight"] = take(f"{theirs}.weight", (n_out, n_in))
        out[f"{ours}.bias"] = take(f"{theirs}.bias", (n_out,))

    def norm(theirs: str, ours: str, d: int) -> None:
        out[f"{ours}.weight"], out[f"{ours}.bias"] = take(f"{theirs}.weight", (d,)), take(f"{theirs}.bias", (d,))

    def split_qkv(w: torch.Tensor, b: torch.Tensor, ours: str) -> None:
        """A fused (3D, D) in-projection (timm `attn.qkv`, nn.MultiheadAttention `in_proj`) -> q/k/v_proj."""
        for x, wp, bp in zip("qkv", w.chunk(3), b.chunk(3)):
            out[f"{ours}.{x}_proj.weight"], out[f"{ours}.{x}_proj.bias"] = wp, bp

    # -- vision: timm VisionTransformer under `visual.trunk` (open_clip TimmModel, proj "none" -> empty visual.head)
    D, M, g = vc["hidden_size"], vc["intermediate_size"], vc["image_size"] // vc["patch_size"]
    P, t, v = vc["patch_size"], "visual.trunk", "vision_model"
    out[f"{v}.embeddings.patch_embedding.weight"] = take(f"{t}.patch_embed.proj.weight", (D, 3, P, P))
    out[f"{v}.embeddings.patch_embedding.bias"] = take(f"{t}.patch_embed.proj.bias", (D,))
    out[f"{v}.embeddings.position_embedding.weight"] = take(f"{t}.pos_embed", (1, g * g, D))[0]
    for i in range(vc["num_hidden_layers"]):
        b, h = f"{t}.blocks.{i}", f"{v}.encoder.layers.{i}"
        norm(f"{b}.norm1", f"{h}.layer_norm1", D)
        split_qkv(take(f"{b}.attn.qkv.weight", (3 * D, D)), take(f"{b}.attn.qkv.bias", (3 * D,)), f"{h}.self_attn")
        linear(f"{b}.attn.proj", f"{h}.self_attn.out_proj", D, D)
        norm(f"{b}.norm2", f"{h}.layer_norm2", D)
        linear(f"{b}.mlp.fc1", f"{h}.mlp.fc1", M, D)
        linear(f"{b}.mlp.fc2", f"{h}.mlp.fc2", D, M)
    norm(f"{t}.norm", f"{v}.post_layernorm", D)
    # AttentionPoolLatent: latent probe, q (D, D) + kv (2D, D) = nn.MultiheadAttention's in_proj (3D, D)
    a = f"{t}.attn_pool"
    out[f"{v}.head.probe"] = take(f"{a}.latent", (1, 1, D))
    out[f"{v}.head.attention.in_proj_weight"] = torch.cat([take(f"{a}.q.weight", (D, D)),
                                                          take(f"{a}.kv.weight", (2 * D, D))])
    out[f"{v}.head.attention.in_proj_bias"] = torch.cat([take(f"{a}.q.bias", (D,)), take(f"{a}.kv.bias", (2 * D,))])
    linear(f"{a}.proj", f"{v}.head.attention.out_proj", D, D)
    norm(f"{a}.norm", f"{v}.head.layernorm", D)
    linear(f"{a}.mlp.fc1", f"{v}.head.mlp.fc1", M, D)
    linear(f"{a}.mlp.fc2", f"{v}.head.mlp.fc2", D, M)

    # -- text: open_clip TextTransformer under `text` (ResidualAttentionBlock: nn.MultiheadAttention + c_fc/c_proj)
    D, M, L, V = tc["hidden_size"], tc["intermediate_size"], tc["max_position_embeddings"], tc["vocab_size"]
    E, t, x = tc["projection_size"] or D, "text", "text_model"
    out[f"{x}.embeddings.token_embedding.weight"] = take(f"{t}.token_embedding.weight", (V, D))
    out[f"{x}.embeddings.position_embedding.weight"] = take(f"{t}.positional_embedding", (L, D))
    for i in range(tc["num_hidden_layers"]):
        b, h = f"{t}.transformer.resblocks.{i}", f"{x}.encoder.layers.{i}"
        norm(f"{b}.ln_1", f"{h}.layer_norm1", D)
        split_qkv(take(f"{b}.attn.in_proj_weight", (3 * D, D)), take(f"{b}.attn.in_proj_bias", (3 * D,)),
                  f"{h}.self_attn")
        linear(f"{b}.attn.out_proj", f"{h}.self_attn.out_proj", D, D)
        norm(f"{b}.ln_2", f"{h}.layer_norm2", D)
        linear(f"{b}.mlp.c_fc", f"{h}.mlp.fc1", M, D)
        linear(f"{b}.mlp.c_proj", f"{h}.mlp.fc2", D, M)
    norm(f"{t}.ln_final", f"{x}.final_layer_norm", D)
    if text_proj_type == "none":  # no projection: an identity head is exact (x * 1 + 0 sums)
        out[f"{x}.head.weight"], out[f"{x}.head.bias"] = torch.eye(D), torch.zeros(D)
    elif f"{t}.text_projection.weight" in src:  # proj_bias=True: nn.Linear(width, embed_dim)
        linear(f"{t}.text_projection", f"{x}.head", E, D)
    else:  # proj_bias=False: a (width, embed_dim) parameter used as `x @ proj`; transformers' head always has a bias
        out[f"{x}.head.weight"] = take(f"{t}.text_projection", (D, E)).t().contiguous()
        out[f"{x}.head.bias"] = torch.zeros(E)
    for name in ("logit_scale", "logit_bias"):  # open_clip: scalar parameters of shape (); transformers: (1,)
        if name not in src or src[name].numel() != 1:
            raise LoadError(f"{where}: weight {name} missing or not a scalar")
        out[name] = src.pop(name).reshape(1)
    out.update(src)  # anything left is not part of a SigLIP model: reported as unused by the build
    return out


def read_weights(folder: str | Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """open_clip weights in transformers SiglipModel names."""
    folder = Path(folder)
    _, _, text = _cfg(folder)
    return to_transformers(read_open_clip_weights(folder, allow_pickle=allow_pickle), transformers_config(folder),
                           folder, text_proj_type=text.get("proj_type", "linear"))


# ---------------------------------------------------------------------------------------------------------- text


def _basic_clean(text: str) -> str:
    """open_clip tokenizer.py `basic_clean`: ftfy.fix_text (when installed; it only repairs mojibake, which well-formed
    text has none of), then html.unescape twice, strip."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    return html.unescape(html.unescape(text)).strip()


_PUNCTUATION = str.maketrans("", "", string.punctuation)


def canonicalize_text(text: str) -> str:
    """open_clip `canonicalize_text`, itself from big_vision evaluators/proj/image_text/prompt_engineering.py#L94
    (commit 53f18ca): "_" -> " ", drop punctuation, lowercase, collapse whitespace."""
    text = text.replace("_", " ").translate(_PUNCTUATION).lower()
    return " ".join(text.split()).strip()


CLEAN_FNS = {  # open_clip tokenizer.py get_clean_fn
    "canonicalize": lambda s: canonicalize_text(_basic_clean(s)),
    "lower": lambda s: " ".join(_basic_clean(s).split()).strip().lower(),
    "whitespace": lambda s: " ".join(_basic_clean(s).split()).strip(),
}


class CleanedTokenizer:
    """open_clip's `HFTokenizer`: its clean function on every text, then the transformers tokenizer with
    padding="max_length", truncation (reproduced by siglite's tokenizer). Same interface as `TextTokenizer`."""

    def __init__(self, inner, clean: str, name: str):
        self.inner, self.clean, self.hf_tokenizer_name = inner, clean, name
        self._fn = CLEAN_FNS[clean]
        self.max_length, self.kind = inner.max_length, inner.kind
        self.returns_mask, self.tokenizer_class = inner.returns_mask, inner.tokenizer_class

    def __call__(self, texts):
        if isinstance(texts, str):
            texts = [texts]
        return self.inner([self._fn(t) if isinstance(t, str) else t for t in texts])

    def settings(self) -> dict:
        return {**self.inner.settings(), "open_clip_clean": self.clean, "hf_tokenizer_name": self.hf_tokenizer_name}

    def __repr__(self) -> str:
        return f"CleanedTokenizer({self.inner!r}, clean={self.clean!r})"


def tokenizer_folder(folder: str | Path) -> Path:
    """Where the tokenizer open_clip_config.json names lives: this folder when it has tokenizer files (as `save_for_hf`
    writes them), else the huggingface_hub cache (offline: never downloads)."""
    folder = Path(folder)
    if any((folder / f).is_file() for f in TOKENIZER_FILES):
        return folder
    _, _, text = _cfg(folder)
    name = text.get("hf_tokenizer_name")
    if not name:
        raise LoadError(f"{folder}: no tokenizer files and {OPEN_CLIP_CONFIG} names no text_cfg.hf_tokenizer_name")
    try:
        from huggingface_hub import snapshot_download

        cached = Path(snapshot_download(name, local_files_only=True))
    except Exception as e:
        raise LoadError(f"{folder}: no tokenizer files here, and the tokenizer {name!r} named by {OPEN_CLIP_CONFIG} is "
                        f"not in the huggingface_hub cache ({type(e).__name__}); fetch it once with "
                        f"`huggingface-cli download {name}`") from e
    if not any((cached / f).is_file() for f in TOKENIZER_FILES):
        raise LoadError(f"{cached}: cached {name!r} has no tokenizer files ({' or '.join(TOKENIZER_FILES)})")
    return cached


def load_tokenizer(folder: str | Path, max_length: int) -> CleanedTokenizer:
    from ..preprocess.text import load_tokenizer as load_hf_tokenizer

    folder = Path(folder)
    _, _, text = _cfg(folder)
    clean = (text.get("tokenizer_kwargs") or {}).get("clean", "whitespace")  # HFTokenizer's default
    if clean not in CLEAN_FNS:
        raise LoadError(f"{folder / OPEN_CLIP_CONFIG}: tokenizer_kwargs.clean {clean!r} is not one of "
                        f"{list(CLEAN_FNS)}")
    if text.get("tokenizer_mode"):
        raise LoadError(f"{folder / OPEN_CLIP_CONFIG}: tokenizer_mode {text['tokenizer_mode']!r} is not supported")
    return CleanedTokenizer(load_hf_tokenizer(tokenizer_folder(folder), max_length), clean,
                            text.get("hf_tokenizer_name", ""))


# -- the checkpoint-format protocol (see `siglite.checkpoints`) ---------------------------------------------------------
# `detect_format` hands over `transformers_config(folder)` and `read_weights` returns transformers SigLIP names, so an
# open_clip folder is, from here on, a transformers SigLIP checkpoint.


def read_config(folder: Path, config: dict):
    """The transformers-style config from `transformers_config` -> a `Checkpoint` of format "open_clip"."""
    import dataclasses

    from . import transformers_siglip

    return dataclasses.replace(transformers_siglip.read_config(folder, config), format="open_clip")


def to_ours(weights: dict[str, torch.Tensor], ckpt) -> tuple[dict[str, torch.Tensor], set[str]]:
    """`read_weights` output (transformers SigLIP names) -> our names."""
    from . import transformers_siglip

    return transformers_siglip.to_ours(weights, ckpt)
