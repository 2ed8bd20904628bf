"""Models to test and measure on when real weights are out of reach: random weights at a real architecture's shape,
and activation-outlier injection that makes a random model look like a trained ViT to a quantizer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .loading import to_hf_state_dict
from .model import Siglip
from .registry import Spec


def random_model(spec: Spec, *, seed: int = 0, vision_layers: int | None = None, text_layers: int | None = None,
                 text: bool = True) -> Siglip:
    """A `Siglip` at `spec`'s shape with random weights (truncated-normal-ish init, as transformers' std 0.02 scheme).

    vision_layers/text_layers override the depth (quick checks at full width); text=False builds the vision tower only.
    """
    from .model import TowerConfig

    vcfg = TowerConfig.from_dict({**spec.vision, **({"num_hidden_layers": vision_layers} if vision_layers else {})})
    tcfg = TowerConfig.from_dict({**spec.text, **({"num_hidden_layers": text_layers} if text_layers else {})})
    gen = torch.Generator().manual_seed(seed)
    model = Siglip(vcfg, tcfg if text else None)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.02, generator=gen)
            elif ".ln" in name or name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif p.dim() >= 2 or "probe" in name or "pos_embed" in name:
                fan_in = p[0].numel() if p.dim() >= 2 and "embed" not in name else p.shape[-1]
                p.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=gen)
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-10.0)
    return model.eval()


def save_checkpoint(model: Siglip, folder: str | Path, spec: Spec | None = None,
                    image_config: dict | None = None) -> Path:
    """Write `model` as a hub-layout folder (config.json with transformers field names, model.safetensors in
    transformers' key names, preprocessor_config.json). Tokenizer files are the caller's (see tests/conftest.py)."""
    from dataclasses import asdict

    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config: dict = {"model_type": "siglip" if model.text is not None else "siglip_vision_model",
                    "architectures": ["SiglipModel"]}
    if model.vision is not None:
        config["vision_config"] = {"model_type": "siglip_vision_model", **asdict(model.vision.cfg)}
    if model.text is not None:
        config["text_config"] = {"model_type": "siglip_text_model", **asdict(model.text.cfg)}
    if model.text is None:  # a vision-only config is flat, as SiglipVisionConfig saves it
        config = {**config, **config.pop("vision_config")}
        config["model_type"] = "siglip_vision_model"
    if model.vision is not None and model.vision.cfg.variable_resolution:  # NaFlex: transformers' Siglip2 layout
        if model.text is not None:
            vision = config["vision_config"]
            vision["model_type"], config["text_config"]["model_type"] = "siglip2_vision_model", "siglip2_text_model"
            config["model_type"], config["architectures"] = "siglip2", ["Siglip2Model"]
        else:  # flat (the unpacking above leaves a copy of the nested dict behind: drop it)
            vision = config
            vision.pop("vision_config", None)
            config["model_type"], config["architectures"] = "siglip2_vision_model", ["Siglip2VisionModel"]
        vision["num_patches"] = model.vision.cfg.num_patches
        for key in ("image_size", "variable_resolution"):
            vision.pop(key)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_file(to_hf_state_dict(model), folder / "model.safetensors")
    if image_config is None and spec is not None:
        image_config = spec.hf_preprocessor_config()
    if image_config is not None:
        (folder / "preprocessor_config.json").write_text(json.dumps(image_config, indent=2))
    return folder


@torch.no_grad()
def inject_outliers(model: Siglip, *, channels: int = 4, scale: float = 80.0, seed: int = 0) -> Siglip:
    """Give the inputs of every block's linear layers a few channels `scale`x larger than the rest, keeping the float
    function unchanged: the LayerNorm gain and shift of those channels are multiplied by `scale` and the matching
    input columns of the following qkv / fc1 weights divided by it. That is the pattern trained ViTs show
    (LayerNorm-gamma outliers, SmoothQuant / LLM.int8() papers), and it breaks per-tensor activation quantization.
    Also applied to the pooling head's MLP input. Returns the model (modified in place)."""
    gen = torch.Generator().manual_seed(seed)
    for tower in (model.vision, model.text):
        if tower is None:
            continue
        pairs = [(b.ln1, b.attn.qkv) for b in tower.blocks] + [(b.ln2, b.mlp.fc1) for b in tower.blocks]
        if getattr(tower, "head", None) is not None and hasattr(tower.head, "norm"):
            pairs.append((tower.head.norm, tower.head.mlp.fc1))
        for norm, linear in pairs:
            D = norm.weight.shape[0]
            idx = torch.randperm(D, generator=gen)[:channels]
            factor = scale * (0.6 + 0.4 * torch.rand(channels, generator=gen))  # 0.6..1.0 x scale
            norm.weight[idx] *= factor
            norm.bias[idx] *= factor
            linear.weight[:, idx] /= factor
    return model


@torch.no_grad()
def amplify_residual(model, factor: float):
    """Multiply the vision residual stream by `factor` without changing the function: everything that writes into it
    (patch embedding, position embedding, attention out-projections, fc2) is scaled, and every LayerNorm reading it
    divides the factor out again (up to eps, which becomes negligible). fp32 output is unchanged; fp16 overflows."""
    v = model.vision
    writers = [v.patch_embed] + [m for b in v.blocks for m in (b.attn.proj, b.mlp.fc2)]
    for m in writers:
        m.weight.mul_(factor)
        m.bias.mul_(factor)
    v.pos_embed.mul_(factor)
    return model


@torch.no_grad()
def massive_channels(model, block: int = 1, channels=(3, 17), factor: float = 1e5):
    """Give the residual stream a few 'massive activation' channels (as trained ViTs have) by scaling fc2's output rows
    for those channels in one block: the residual there exceeds fp16's range. Changes the function; fp32 stays finite
    and is the reference."""
    fc2 = model.vision.blocks[block].mlp.fc2
    idx = torch.tensor(channels)
    fc2.weight[idx] *= factor
    fc2.bias[idx] = factor
    return model
