"""Write the committed open_clip-format fixtures (tests/fixtures/open_clip-*) with open_clip's own model and saver.

Run in the open_clip reference environment (open_clip needs torchvision, which does not import beside the main CPU
torch build; see tests/fixtures/REPRODUCE-open_clip.md):

    /work/refenv-oc/bin/python tests/reference/make_open_clip_fixtures.py tests/fixtures

What it does, per fixture:
1. registers a tiny timm SigLIP trunk (`vit_{size}_patch8_siglip_32`, timm's own `VisionTransformer` with
   class_token=False, global_pool="map", as timm's `vit_*_siglip_*` functions build it) and an open_clip model config
   (`open_clip.add_model_config`) shaped like open_clip's ViT-B-16-SigLIP.json (v1: exact GELU text MLP) or
   ViT-B-16-SigLIP2.json (SigLIP 2: `act_kwargs: {approximate: tanh}`, Gemma tokenizer.json);
2. `open_clip.create_model(name)`, weights spread with seeded noise, logit scale/bias set;
3. `open_clip.push_to_hf_hub.save_for_hf(model, tokenizer, model_config, out)` -> open_clip_config.json,
   open_clip_model.safetensors, tokenizer files (exactly what `push_to_hf_hub` uploads);
4. reloads the folder as a user would (`create_model_from_pretrained("local-dir:...")`,
   `get_tokenizer("local-dir:...")`) and stores open_clip's outputs on fixed inputs in reference.npz: token ids,
   `encode_text`, `encode_image`, the trunk's last hidden state (`visual.trunk.forward_features`), sigmoid
   probabilities, and open_clip's preprocessing of a fixed image (`preprocess` from the same call).

Tokenizers come from tests/tokenizer_fixtures.py (trained here, deterministic). The tiny trunk sizes are not timm
models anyone publishes, so siglite's table of timm SigLIP sizes does not know them: tests add these rows
(`TINY_TIMM_SIZES` below, mirrored in tests/test_open_clip.py) the way a new timm size would be added.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import open_clip
import timm
import torch
from open_clip.push_to_hf_hub import save_for_hf
from open_clip.tokenizer import HFTokenizer
from PIL import Image
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for tokenizer_fixtures
from tokenizer_fixtures import make_gemma_tokenizer, make_spiece_tokenizer  # noqa: E402

TEXTS = ["a photo of a cat", "A DOG, running!", "", "ünïcödé café 東京", "word " * 30, "x", "snake_case &amp; more"]
# size token -> timm VisionTransformer arguments (as timm's vit_*_siglip_* functions; giantopt uses gelu_tanh)
TINY_TIMM_SIZES = {
    "sigtiny": dict(embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0),
    "sigtinyopt": dict(embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.5, act_layer="gelu_tanh"),
}


def _register(size: str) -> str:
    name = f"vit_{size}_patch8_siglip_32"

    def entry(pretrained: bool = False, **kwargs) -> VisionTransformer:
        args = dict(img_size=32, patch_size=8, class_token=False, global_pool="map", **TINY_TIMM_SIZES[size])
        kwargs = {k: v for k, v in kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")}
        return VisionTransformer(**dict(args, **kwargs))

    entry.__name__ = name
    register_model(entry)
    return name


def model_config(timm_name: str, tokenizer_name: str, vocab: int, context: int, siglip2: bool,
                 proj_none: bool = False) -> dict:
    """Shaped like open_clip's model_configs/ViT-B-16-SigLIP.json / ViT-B-16-SigLIP2.json, at tiny width."""
    text = {"context_length": context, "vocab_size": vocab, "hf_tokenizer_name": tokenizer_name,
            "tokenizer_kwargs": {"clean": "canonicalize"}, "width": 32, "heads": 4, "layers": 2,
            "no_causal_mask": True, "proj_bias": True, "pool_type": "last", "norm_kwargs": {"eps": 1e-6}}
    if siglip2:
        text["act_kwargs"] = {"approximate": "tanh"}
    if proj_none:  # as ViT-SO400M-16-SigLIP-i18n-256.json: no text projection
        text["proj_type"] = "none"
        del text["proj_bias"]
    return {"embed_dim": 32, "init_logit_bias": -10, "custom_text": True,
            "vision_cfg": {"image_size": 32, "timm_model_name": timm_name, "timm_model_pretrained": False,
                           "timm_pool": "map", "timm_proj": "none"},
            "text_cfg": text}


def build(root: Path, name: str, size: str, tokenizer: str, context: int, siglip2: bool, seed: int,
          proj_none: bool = False) -> None:
    out = root / name
    if out.exists():
        shutil.rmtree(out)
    timm_name = _register(size)
    tmp = Path(tempfile.mkdtemp())
    (make_spiece_tokenizer if tokenizer == "spiece" else make_gemma_tokenizer)(tmp / "tok", max_length=context)
    tok = HFTokenizer(str(tmp / "tok"), context_length=context, clean="canonicalize")
    cfg = model_config(timm_name, f"siglite-tests/{name}-tokenizer", len(tok.tokenizer), context, siglip2, proj_none)
    (tmp / "cfg").mkdir()
    (tmp / "cfg" / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp / "cfg")
    torch.manual_seed(seed)
    # preprocessing as open_clip's pretrained.py registers it for the SigLIP weights (`_slpcfg`: mean = std = 0.5,
    # resize_mode "squash"); bilinear for the SigLIP 2 fixture to exercise the other filter
    pp = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bilinear" if siglip2 else "bicubic",
          "resize_mode": "squash"}
    model = open_clip.create_model(name, pretrained=None, force_preprocess_cfg=pp).eval()
    with torch.no_grad():  # open_clip/timm init leaves LayerNorms at 1/0 and biases at 0: spread every tensor
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        model.logit_scale.fill_(float(np.log(10.0)))
        model.logit_bias.fill_(-2.0)
    save_for_hf(model, tok, cfg, out, safe_serialization=True)
    shutil.rmtree(tmp)

    # Reference outputs from the saved folder, loaded the way open_clip users load a local hub-format folder.
    loaded, preprocess = open_clip.create_model_from_pretrained(f"local-dir:{out}")
    loaded.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(rng.uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32))
    image = rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)  # odd size: exercises the resize
    ids = tokenizer(TEXTS)
    with torch.no_grad():
        img = loaded.encode_image(pixels)
        txt = loaded.encode_text(ids)
        probs = torch.sigmoid(loaded.logit_scale.exp() * torch.nn.functional.normalize(img, dim=-1)
                              @ torch.nn.functional.normalize(txt, dim=-1).T + loaded.logit_bias)
        ref = {"pixels": pixels.numpy(), "input_ids": ids.numpy(), "image_pooled": img.numpy(),
               "image_tokens": loaded.visual.trunk.forward_features(pixels).numpy(), "text_pooled": txt.numpy(),
               "probs": probs.numpy(), "image_uint8": image,
               "image_preprocessed": preprocess(Image.fromarray(image)).numpy()}
    np.savez_compressed(out / "reference.npz", **ref)
    print(f"{name}: open_clip {open_clip.__version__}, timm {timm.__version__}, "
          f"files {sorted(p.name for p in out.iterdir())}, "
          f"{sum(p.stat().st_size for p in out.iterdir()) / 1024:.0f} KB")


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
    build(root, "open_clip-siglip", "sigtiny", "spiece", 16, siglip2=False, seed=0)
    build(root, "open_clip-siglip2", "sigtinyopt", "gemma", 24, siglip2=True, seed=1)
    build(root, "open_clip-siglip-noproj", "sigtiny", "spiece", 16, siglip2=False, seed=2, proj_none=True)


if __name__ == "__main__":
    main()
