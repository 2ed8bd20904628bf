"""Writing our model as a hub-layout folder, and random-weight models at a real architecture's shape (for benchmarks,
training from scratch and tests when real weights are out of reach)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..registry import Spec


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

    from . import _format_of, format_module
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
