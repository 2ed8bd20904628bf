"""Tiny SigLIP 2 NaFlex checkpoints built on the fly with transformers' own save functions: a random-init
`Siglip2Model` (`save_pretrained`) plus a `Siglip2Processor` (PIL image processor + the Gemma-style tokenizer.json of
`tokenizer_fixtures.make_gemma_tokenizer`), so the folder has transformers 5's layout (`processor_config.json`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from tokenizer_fixtures import make_gemma_tokenizer

# tall, wide, square, tiny, odd aspect: (height, width)
ASPECTS = [(300, 40), (40, 300), (128, 128), (5, 7), (97, 61)]


def make_naflex_checkpoint(folder: Path, *, patch_size: int = 4, num_patches: int = 64, max_num_patches: int = 64,
                           width: int = 32, depth: int = 2, heads: int = 4, mlp: int = 80, text_len: int = 64,
                           resample: int = 2, seed: int = 0, preprocessor_json: bool = False) -> Path:
    """Save a random-weight Siglip2Model with its Siglip2Processor into `folder`.

    preprocessor_json: also write the image processor as a flat preprocessor_config.json (the hub checkpoints'
    layout) next to transformers 5's processor_config.json.
    """
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, Siglip2Config, Siglip2Model, Siglip2Processor
    from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil

    folder.mkdir(parents=True, exist_ok=True)
    make_gemma_tokenizer(folder, max_length=text_len)
    vocab = Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab_size()
    tower = dict(hidden_size=width, intermediate_size=mlp, num_hidden_layers=depth, num_attention_heads=heads)
    config = Siglip2Config(
        text_config={**tower, "vocab_size": vocab, "max_position_embeddings": text_len},
        vision_config={**tower, "patch_size": patch_size, "num_patches": num_patches},
    )
    torch.manual_seed(seed)
    model = Siglip2Model(config).eval()
    with torch.no_grad():  # transformers' init leaves some tensors at 0/1; spread every tensor so all paths count
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        # a position grid with structure (not noise), so resizing it matters and errors in it show
        pos = model.vision_model.embeddings.position_embedding.weight
        g = int(num_patches**0.5)
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, g), torch.linspace(-1, 1, g), indexing="ij")
        basis = torch.stack([torch.sin(3 * xx + k) * torch.cos(2 * yy - k) for k in range(pos.shape[1])], -1)
        pos.copy_(basis.reshape(num_patches, -1))
        model.logit_scale.fill_(np.log(10.0))
        model.logit_bias.fill_(-2.0)
    model.save_pretrained(folder, safe_serialization=True)
    image_processor = Siglip2ImageProcessorPil(patch_size=patch_size, max_num_patches=max_num_patches,
                                               resample=resample)
    Siglip2Processor(image_processor=image_processor, tokenizer=AutoTokenizer.from_pretrained(folder)
                     ).save_pretrained(folder)
    if preprocessor_json:
        d = json.loads((folder / "processor_config.json").read_text())["image_processor"]
        (folder / "preprocessor_config.json").write_text(json.dumps({**d, "processor_class": "Siglip2Processor"}))
    return folder


def aspect_images(seed: int = 0):
    """PIL RGB images of the `ASPECTS` shapes: smooth gradients plus noise (so resampling filters matter)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for h, w in ASPECTS:
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (3 * xx + 5 * yy) % 256], -1)
        out.append(Image.fromarray(np.clip(base + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8)))
    return out
