"""The open_clip / timm hub format: open_clip_config.json + open_clip_model.safetensors (or *_pytorch_model.bin).

This is how timm/ViT-B-16-SigLIP, timm/ViT-SO400M-14-SigLIP-384, the SigLIP 2 open_clip repos, open_clip's CLIP
weights (e.g. laion/CLIP-ViT-B-32-laion2B-s34B-b79K's open_clip files) and fine-tunes published with open_clip's
`push_to_hf_hub` ship. A folder is converted, explicitly and with every shape checked, to what a transformers
checkpoint of the same function holds (config dict + state dict in transformers' names): `SiglipModel` for a timm
SigLIP trunk with sigmoid logits, `CLIPModel` for open_clip's own VisionTransformer + TextTransformer (`model_kind`);
the transformers build path (`siglite.checkpoints.build_model`) then reports missing and unused weights as for any
checkpoint. CLIP text goes through open_clip's SimpleTokenizer (`siglite.preprocess.open_clip_text`).

References:
* open_clip `src/open_clip/push_to_hf_hub.py` (`save_for_hf`, `save_config_for_hf`): the files and their fields;
  `model.py` (`CLIPVisionCfg`, `CLIPTextCfg`, `_build_text_tower`), `transformer.py` (`TextTransformer`,
  `ResidualAttentionBlock`), `timm_model.py` (`TimmModel`), `tokenizer.py` (`HFTokenizer`, `canonicalize_text`).
* timm `models/vision_transformer.py` (`vit_*_siglip_*` model functions: width, depth, heads, MLP ratio, activation;
  `Block`, `Attention` with fused qkv) and `layers/attention_pool.py` (`AttentionPoolLatent`).
* transformers `models/siglip/convert_siglip_to_hf.py`: the big_vision -> transformers names on the other side.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import LoadError
from ..preprocess.open_clip_text import CLEAN_FNS, SimpleTokenizer
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
GELU_FORMS = {"none": EXACT_GELU, "tanh": TANH_GELU}  # nn.GELU(approximate=...) -> transformers hidden_act
SIGLIP, CLIP = "siglip", "clip"  # the transformers family an open_clip config maps onto (`model_kind`)

# open_clip preprocess_cfg.resize_mode -> the transformers image processor fields that do the same (`image_processor`)
RESIZE_MODES = {
    "squash": lambda s: {"size": {"height": s, "width": s}},
    "shortest": lambda s: {"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": s},
                           "do_center_crop": True, "crop_size": {"height": s, "width": s}},
}
# when preprocess_cfg names no resize_mode: open_clip's PreprocessCfg default ("shortest") for CLIP; "squash" for
# SigLIP, as open_clip's pretrained registry sets for every SigLIP weight
DEFAULT_RESIZE_MODE = {SIGLIP: "squash", CLIP: "shortest"}

# open_clip CLIPVisionCfg / CLIPTextCfg (model.py) fields whose other values build layers siglite's CLIP towers do not
# have: field -> (the open_clip default, which is the only value supported; why). patch_dropout is training-only.
_CUSTOM_BLOCK = "CustomResidualAttentionBlock feature"
CLIP_VISION_FIXED = {
    "ls_init_value": (None, "no layer scale"), "attentional_pool": (False, "class-token pooling"),
    "no_ln_pre": (False, "CLIP has ln_pre"), "pos_embed_type": ("learnable", "learned position embedding"),
    "final_ln_after_pool": (False, "ln_post before pooling"), "pool_type": ("tok", "class-token pooling"),
    **{k: (False, _CUSTOM_BLOCK) for k in ("qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner",
                                             "scale_attn", "scale_fc")},
}
CLIP_TEXT_FIXED = {
    "ls_init_value": (None, "no layer scale"), "embed_cls": (False, "no class token"),
    "no_causal_mask": (False, "CLIP text attention is causal"),
    "final_ln_after_pool": (False, "ln_final before pooling"),
    "pool_type": ("argmax", "pooling at the highest id, <end_of_text>"), "proj_type": ("linear", "a text_projection"),
    "proj_bias": (False, "CLIP's text_projection has no bias"), "tokenizer_mode": (None, "open_clip's SimpleTokenizer"),
    "hf_model_name": (None, "an open_clip TextTransformer, not a transformers text model"),
    **{k: (False, _CUSTOM_BLOCK) for k in ("qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner",
                                             "scale_attn", "scale_fc")},
}


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


def model_kind(folder: str | Path) -> str:
    """Which transformers family an open_clip config maps onto: "siglip" (a timm SigLIP trunk, sigmoid logits) or
    "clip" (open_clip's own VisionTransformer and TextTransformer, softmax logits)."""
    folder = Path(folder)
    path = folder / OPEN_CLIP_CONFIG
    model_cfg, vision, _ = _cfg(folder)
    if vision.get("timm_model_name"):
        return SIGLIP
    if isinstance(vision.get("layers", 12), (list, tuple)):
        raise LoadError(f"{path}: vision_cfg.layers {vision['layers']} is a ResNet tower (ModifiedResNet), "
                        "not supported")
    if "init_logit_bias" in model_cfg:
        raise LoadError(f"{path}: sigmoid logits (init_logit_bias) on open_clip's own VisionTransformer are not "
                        "supported (SigLIP checkpoints use a timm trunk)")
    return CLIP


def _siglip_config(path: Path, model_cfg: dict, vision: dict, text: dict) -> dict:
    if not model_cfg.get("custom_text", False) and "init_logit_bias" not in model_cfg:
        raise LoadError(f"{path}: not a SigLIP model (no init_logit_bias: an open_clip CLIP model?)")
    return {
        "model_type": "siglip", "architectures": ["SiglipModel"],
        "vision_config": _vision_config(path, model_cfg, vision),
        "text_config": _text_config(path, model_cfg, text),
    }


def _check_fixed(path: Path, where: str, cfg: dict, fixed: dict) -> None:
    """Every `fixed` field of an open_clip tower config at the one value siglite's CLIP tower has."""
    for key, (default, why) in fixed.items():
        if cfg.get(key, default) != default:
            raise LoadError(f"{path}: {where}.{key} = {cfg[key]!r} is not supported ({why})")


def _act_and_eps(path: Path, model_cfg: dict, cfg: dict, where: str) -> tuple[str, float]:
    """open_clip's activation (QuickGELU when model_cfg.quick_gelu, else nn.GELU(**act_kwargs)) and LayerNorm eps."""
    approximate = (cfg.get("act_kwargs") or {}).get("approximate", "none")
    if approximate not in GELU_FORMS:
        raise LoadError(f"{path}: {where}.act_kwargs.approximate {approximate!r} is not a GELU form")
    act = "quick_gelu" if model_cfg.get("quick_gelu", False) else GELU_FORMS[approximate]
    return act, (cfg.get("norm_kwargs") or {}).get("eps", 1e-5)


def _clip_config(path: Path, model_cfg: dict, vision: dict, text: dict) -> dict:
    """open_clip CLIP (model.py `CLIPVisionCfg` / `CLIPTextCfg` fields, their defaults) -> a transformers CLIPConfig."""
    _check_fixed(path, "vision_cfg", vision, CLIP_VISION_FIXED)
    _check_fixed(path, "text_cfg", text, CLIP_TEXT_FIXED)
    image_size, patch_size = vision.get("image_size", 224), vision.get("patch_size", 16)
    image_size, patch_size = (s[0] if isinstance(s, (list, tuple)) and len(set(s)) == 1 else s  # (S, S) -> S
                              for s in (image_size, patch_size))
    if not isinstance(image_size, int) or not isinstance(patch_size, int):
        raise LoadError(f"{path}: vision_cfg image_size {image_size} / patch_size {patch_size}: only square sizes")
    width = vision.get("width", 768)
    act, eps = _act_and_eps(path, model_cfg, vision, "vision_cfg")
    vision_config = {
        "model_type": "clip_vision_model", "hidden_size": width,
        "intermediate_size": int(width * vision.get("mlp_ratio", 4.0)), "num_hidden_layers": vision.get("layers", 12),
        "num_attention_heads": width // vision.get("head_width", 64), "image_size": image_size,
        "patch_size": patch_size, "num_channels": 3, "hidden_act": act, "layer_norm_eps": eps,
    }
    width = text.get("width", 512)
    act, eps = _act_and_eps(path, model_cfg, text, "text_cfg")
    text_config = {
        "model_type": "clip_text_model", "hidden_size": width,
        "intermediate_size": int(width * text.get("mlp_ratio", 4.0)),
        "num_hidden_layers": text.get("layers", 12), "num_attention_heads": text.get("heads", 8),
        "vocab_size": text.get("vocab_size", 49408), "max_position_embeddings": text.get("context_length", 77),
        "hidden_act": act, "layer_norm_eps": eps,
        # open_clip pools at text.argmax(-1) (pool_type "argmax": <end_of_text> is the highest id); transformers'
        # CLIPTextTransformer does exactly that when eos_token_id == 2 (its legacy rule), the first EOS otherwise
        "eos_token_id": 2,
    }
    return {"model_type": "clip", "architectures": ["CLIPModel"], "projection_dim": model_cfg.get("embed_dim", 512),
            "vision_config": vision_config, "text_config": text_config}


def transformers_config(folder: str | Path) -> dict:
    """open_clip_config.json -> the config.json a transformers SiglipModel / CLIPModel of the same function would
    have."""
    folder = Path(folder)
    model_cfg, vision, text = _cfg(folder)
    build = _siglip_config if model_kind(folder) == SIGLIP else _clip_config
    return build(folder / OPEN_CLIP_CONFIG, model_cfg, vision, text)


def image_processor(folder: str | Path) -> dict:
    """preprocess_cfg (+ the vision image size) -> transformers image processor settings.

    open_clip's `image_transform` (eval) resizes the PIL image with torchvision's Resize (= PIL resize with the named
    filter), then ToTensor and Normalize. resize_mode "squash" resizes to (S, S): SiglipImageProcessor. "shortest"
    resizes the shorter side to S (the longer to int(S * long / short)) and centre-crops S x S: CLIPImageProcessor,
    except that torchvision's CenterCrop rounds an odd margin's half to even (`int(round(m / 2))`) where transformers
    floors it, so crops can sit one pixel apart when the resized side exceeds S by an odd number of pixels."""
    folder = Path(folder)
    path = folder / OPEN_CLIP_CONFIG
    pp = read_json_object(path).get("preprocess_cfg") or {}
    kind = model_kind(folder)
    size = transformers_config(folder)["vision_config"]["image_size"]
    interpolation = pp.get("interpolation", "bicubic")
    if interpolation not in INTERPOLATIONS:
        raise LoadError(f"{path}: preprocess_cfg.interpolation {interpolation!r} is not one of "
                        f"{sorted(INTERPOLATIONS)}")
    resize_mode = pp.get("resize_mode", DEFAULT_RESIZE_MODE[kind])
    if resize_mode not in RESIZE_MODES:
        raise LoadError(f"{path}: preprocess_cfg.resize_mode {resize_mode!r} is not supported "
                        f"({' or '.join(RESIZE_MODES)})")
    return {
        **RESIZE_MODES[resize_mode](size),
        "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
        "resample": INTERPOLATIONS[interpolation],
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


class _KeyMap:
    """open_clip names -> transformers names, one tensor at a time, every shape checked against the config."""

    def __init__(self, oc: dict[str, torch.Tensor], where: Path):
        self.src, self.out, self.where = dict(oc), {}, where

    def take(self, key: str, shape: tuple) -> torch.Tensor:
        if key not in self.src:
            raise LoadError(f"{self.where}: missing weight {key}")
        t = self.src.pop(key)
        if tuple(t.shape) != tuple(shape):
            raise LoadError(f"{self.where}: weight {key} has shape {tuple(t.shape)}, "
                            f"{OPEN_CLIP_CONFIG} implies {shape}")
        return t

    def put(self, theirs: str, ours: str, shape: tuple) -> None:
        self.out[ours] = self.take(theirs, shape)

    def linear(self, theirs: str, ours: str, n_out: int, n_in: int) -> None:
        self.put(f"{theirs}.weight", f"{ours}.weight", (n_out, n_in))
        self.put(f"{theirs}.bias", f"{ours}.bias", (n_out,))

    def norm(self, theirs: str, ours: str, d: int) -> None:
        self.put(f"{theirs}.weight", f"{ours}.weight", (d,))
        self.put(f"{theirs}.bias", f"{ours}.bias", (d,))

    def qkv(self, w: torch.Tensor, b: torch.Tensor, ours: str) -> None:
        """A fused (3D, D) in-projection (timm `attn.qkv`, nn.MultiheadAttention `in_proj`) -> q/k/v_proj."""
        for x, wp, bp in zip("qkv", w.chunk(3), b.chunk(3)):
            self.out[f"{ours}.{x}_proj.weight"], self.out[f"{ours}.{x}_proj.bias"] = wp, bp

    def resblocks(self, theirs: str, ours: str, layers: int, d: int, m: int) -> None:
        """open_clip `Transformer.resblocks` (ResidualAttentionBlock: nn.MultiheadAttention + c_fc/c_proj) ->
        transformers `encoder.layers` (the same in SigLIP and CLIP)."""
        for i in range(layers):
            b, h = f"{theirs}.resblocks.{i}", f"{ours}.layers.{i}"
            self.norm(f"{b}.ln_1", f"{h}.layer_norm1", d)
            self.qkv(self.take(f"{b}.attn.in_proj_weight", (3 * d, d)), self.take(f"{b}.attn.in_proj_bias", (3 * d,)),
                     f"{h}.self_attn")
            self.linear(f"{b}.attn.out_proj", f"{h}.self_attn.out_proj", d, d)
            self.norm(f"{b}.ln_2", f"{h}.layer_norm2", d)
            self.linear(f"{b}.mlp.c_fc", f"{h}.mlp.fc1", m, d)
            self.linear(f"{b}.mlp.c_proj", f"{h}.mlp.fc2", d, m)

    def scalars(self, *names: str) -> None:
        for name in names:  # open_clip: scalar parameters of shape (); transformers: (1,) (CLIP's () is reshaped too)
            if name not in self.src or self.src[name].numel() != 1:
                raise LoadError(f"{self.where}: weight {name} missing or not a scalar")
            self.out[name] = self.src.pop(name).reshape(1)

    def result(self) -> dict[str, torch.Tensor]:
        return {**self.out, **self.src}  # anything left over is reported as unused by the build, under its own name


def to_transformers(oc: dict[str, torch.Tensor], config: dict, where: Path, *,
                    text_proj_type: str = "linear") -> dict[str, torch.Tensor]:
    """open_clip / timm names -> transformers SiglipModel names, explicitly, every shape checked.

    Keys left unmapped are passed through under their open_clip name so the build path reports them as unused.
    """
    vc, tc = config["vision_config"], config["text_config"]
    km = _KeyMap(oc, where)

    # -- vision: timm VisionTransformer under `visual.trunk` (open_clip TimmModel, proj "none" -> empty visual.head)
    D, M, g = vc["hidden_size"], vc["intermediate_size"], vc["image_size"] // vc["patch_size"]
    P, t, v = vc["patch_size"], "visual.trunk", "vision_model"
    km.put(f"{t}.patch_embed.proj.weight", f"{v}.embeddings.patch_embedding.weight", (D, 3, P, P))
    km.put(f"{t}.patch_embed.proj.bias", f"{v}.embeddings.patch_embedding.bias", (D,))
    km.out[f"{v}.embeddings.position_embedding.weight"] = km.take(f"{t}.pos_embed", (1, g * g, D))[0]
    for i in range(vc["num_hidden_layers"]):
        b, h = f"{t}.blocks.{i}", f"{v}.encoder.layers.{i}"
        km.norm(f"{b}.norm1", f"{h}.layer_norm1", D)
        km.qkv(km.take(f"{b}.attn.qkv.weight", (3 * D, D)), km.take(f"{b}.attn.qkv.bias", (3 * D,)), f"{h}.self_attn")
        km.linear(f"{b}.attn.proj", f"{h}.self_attn.out_proj", D, D)
        km.norm(f"{b}.norm2", f"{h}.layer_norm2", D)
        km.linear(f"{b}.mlp.fc1", f"{h}.mlp.fc1", M, D)
        km.linear(f"{b}.mlp.fc2", f"{h}.mlp.fc2", D, M)
    km.norm(f"{t}.norm", f"{v}.post_layernorm", D)
    # AttentionPoolLatent: latent probe, q (D, D) + kv (2D, D) = nn.MultiheadAttention's in_proj (3D, D)
    a = f"{t}.attn_pool"
    km.put(f"{a}.latent", f"{v}.head.probe", (1, 1, D))
    km.out[f"{v}.head.attention.in_proj_weight"] = torch.cat([km.take(f"{a}.q.weight", (D, D)),
                                                             km.take(f"{a}.kv.weight", (2 * D, D))])
    km.out[f"{v}.head.attention.in_proj_bias"] = torch.cat([km.take(f"{a}.q.bias", (D,)),
                                                           km.take(f"{a}.kv.bias", (2 * D,))])
    km.linear(f"{a}.proj", f"{v}.head.attention.out_proj", D, D)
    km.norm(f"{a}.norm", f"{v}.head.layernorm", D)
    km.linear(f"{a}.mlp.fc1", f"{v}.head.mlp.fc1", M, D)
    km.linear(f"{a}.mlp.fc2", f"{v}.head.mlp.fc2", D, M)

    # -- text: open_clip TextTransformer under `text` (CustomTextCLIP)
    D, M, L, V = tc["hidden_size"], tc["intermediate_size"], tc["max_position_embeddings"], tc["vocab_size"]
    E, t, x = tc["projection_size"] or D, "text", "text_model"
    km.put(f"{t}.token_embedding.weight", f"{x}.embeddings.token_embedding.weight", (V, D))
    km.put(f"{t}.positional_embedding", f"{x}.embeddings.position_embedding.weight", (L, D))
    km.resblocks(f"{t}.transformer", f"{x}.encoder", tc["num_hidden_layers"], D, M)
    km.norm(f"{t}.ln_final", f"{x}.final_layer_norm", D)
    if text_proj_type == "none":  # no projection: an identity head is exact (x * 1 + 0 sums)
        km.out[f"{x}.head.weight"], km.out[f"{x}.head.bias"] = torch.eye(D), torch.zeros(D)
    elif f"{t}.text_projection.weight" in km.src:  # proj_bias=True: nn.Linear(width, embed_dim)
        km.linear(f"{t}.text_projection", f"{x}.head", E, D)
    else:  # proj_bias=False: a (width, embed_dim) parameter used as `x @ proj`; transformers' head always has a bias
        km.out[f"{x}.head.weight"] = km.take(f"{t}.text_projection", (D, E)).t().contiguous()
        km.out[f"{x}.head.bias"] = torch.zeros(E)
    km.scalars("logit_scale", "logit_bias")
    return km.result()


def clip_to_transformers(oc: dict[str, torch.Tensor], config: dict, where: Path, *,
                         text_prefix: str = "") -> dict[str, torch.Tensor]:
    """open_clip CLIP names (native `VisionTransformer` under `visual`, `TextTransformer` at the top level, or under
    `text.` for CustomTextCLIP) -> transformers CLIPModel names, explicitly, every shape checked.

    References: open_clip `transformer.py` (`VisionTransformer`: conv1 without bias, class_embedding (D,),
    positional_embedding (1 + g*g, D), ln_pre, transformer, ln_post, proj (D, E) used as `x @ proj`;
    `TextTransformer`), transformers `models/clip/convert_clip_original_pytorch_to_hf.py` (the same map for OpenAI's
    checkpoints, which open_clip's CLIP models share).
    """
    vc, tc, E = config["vision_config"], config["text_config"], config["projection_dim"]
    km = _KeyMap(oc, where)

    D, M, P = vc["hidden_size"], vc["intermediate_size"], vc["patch_size"]
    T, v = 1 + (vc["image_size"] // P) ** 2, "vision_model"
    km.put("visual.conv1.weight", f"{v}.embeddings.patch_embedding.weight", (D, 3, P, P))
    km.put("visual.class_embedding", f"{v}.embeddings.class_embedding", (D,))
    km.put("visual.positional_embedding", f"{v}.embeddings.position_embedding.weight", (T, D))
    km.norm("visual.ln_pre", f"{v}.pre_layrnorm", D)
    km.resblocks("visual.transformer", f"{v}.encoder", vc["num_hidden_layers"], D, M)
    km.norm("visual.ln_post", f"{v}.post_layernorm", D)
    km.out["visual_projection.weight"] = km.take("visual.proj", (D, E)).t().contiguous()  # x @ proj = Linear(proj.T)

    D, M, L, V = tc["hidden_size"], tc["intermediate_size"], tc["max_position_embeddings"], tc["vocab_size"]
    t = "text_model"
    km.put(f"{text_prefix}token_embedding.weight", f"{t}.embeddings.token_embedding.weight", (V, D))
    km.put(f"{text_prefix}positional_embedding", f"{t}.embeddings.position_embedding.weight", (L, D))
    km.resblocks(f"{text_prefix}transformer", f"{t}.encoder", tc["num_hidden_layers"], D, M)
    km.norm(f"{text_prefix}ln_final", f"{t}.final_layer_norm", D)
    km.out["text_projection.weight"] = km.take(f"{text_prefix}text_projection", (D, E)).t().contiguous()
    km.scalars("logit_scale")
    return km.result()


def read_weights(folder: str | Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """open_clip weights in transformers SiglipModel / CLIPModel names."""
    folder = Path(folder)
    model_cfg, _, text = _cfg(folder)
    weights, config = read_open_clip_weights(folder, allow_pickle=allow_pickle), transformers_config(folder)
    if config["model_type"] == "clip":
        prefix = "text." if model_cfg.get("custom_text") else ""  # CustomTextCLIP keeps the text tower under `text`
        return clip_to_transformers(weights, config, folder, text_prefix=prefix)
    return to_transformers(weights, config, folder, text_proj_type=text.get("proj_type", "linear"))


# ---------------------------------------------------------------------------------------------------------- text


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


def load_tokenizer(folder: str | Path, max_length: int) -> CleanedTokenizer | SimpleTokenizer:
    """open_clip `get_tokenizer`: an HFTokenizer when text_cfg names hf_tokenizer_name, else (CLIP) its
    SimpleTokenizer, here over the folder's CLIP BPE files (clean "lower" unless tokenizer_kwargs says otherwise)."""
    from ..preprocess.text import load_tokenizer as load_hf_tokenizer

    folder = Path(folder)
    _, _, text = _cfg(folder)
    if model_kind(folder) == CLIP and not text.get("hf_tokenizer_name"):
        return SimpleTokenizer(folder, max_length, (text.get("tokenizer_kwargs") or {}).get("clean", "lower"))
    clean = (text.get("tokenizer_kwargs") or {}).get("clean", "whitespace")  # HFTokenizer's default
    if clean not in CLEAN_FNS:
        raise LoadError(f"{folder / OPEN_CLIP_CONFIG}: tokenizer_kwargs.clean {clean!r} is not one of "
                        f"{list(CLEAN_FNS)}")
    if text.get("tokenizer_mode"):
        raise LoadError(f"{folder / OPEN_CLIP_CONFIG}: tokenizer_mode {text['tokenizer_mode']!r} is not supported")
    return CleanedTokenizer(load_hf_tokenizer(tokenizer_folder(folder), max_length), clean,
                            text.get("hf_tokenizer_name", ""))


# -- the checkpoint-format protocol (see `siglite.checkpoints`) -------------------------------------------------------
# `detect_format` hands over `transformers_config(folder)` and `read_weights` returns transformers SigLIP / CLIP names,
# so an open_clip folder is, from here on, a checkpoint of that transformers format (its family's
# `checkpoint_format`), recorded as format "open_clip".


def _transformers_format(config: dict):
    """The transformers format module of the config's family (transformers_siglip or transformers_clip)."""
    from ..config import family_of_model_type
    from . import transformers_clip, transformers_siglip

    modules = {m.FAMILY: m for m in (transformers_siglip, transformers_clip)}
    return modules[family_of_model_type(config["model_type"]).name]


def read_config(folder: Path, config: dict):
    """The transformers-style config from `transformers_config` -> a `Checkpoint` of format "open_clip"."""
    import dataclasses

    return dataclasses.replace(_transformers_format(config).read_config(folder, config), format="open_clip")


def to_ours(weights: dict[str, torch.Tensor], ckpt) -> tuple[dict[str, torch.Tensor], set[str]]:
    """`read_weights` output (transformers SigLIP / CLIP names) -> our names."""
    return _transformers_format(ckpt.config).to_ours(weights, ckpt)
