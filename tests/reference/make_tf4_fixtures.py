"""Write the committed transformers-4.x-layout fixtures (tests/fixtures/tf4-*) with transformers 4.57's own savers.

Run with the transformers 4.x reference environment (see tests/fixtures/REPRODUCE-tf4.md):

    /work/refenv-tf4/bin/python tests/reference/make_tf4_fixtures.py tests/fixtures

Each folder is what `SiglipModel.save_pretrained` (or `SiglipVisionModel`) + `SiglipProcessor.save_pretrained`
(or `SiglipImageProcessor.save_pretrained`) of transformers 4.x write: preprocessor_config.json (flat),
special_tokens_map.json, tokenizer_config.json, spiece.model or tokenizer.json. Tokenizers come from
tests/tokenizer_fixtures.py (trained here, deterministic). `reference.npz` holds transformers 4.57's outputs on fixed
inputs: token ids (and attention_mask when the tokenizer returns one), text pooler_output with input_ids only (SigLIP as
trained) and with the mask, image pooler_output and last_hidden_state.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import (AutoTokenizer, SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor,
                          SiglipVisionModel)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for tokenizer_fixtures
from tokenizer_fixtures import make_gemma_tokenizer, make_spiece_tokenizer  # noqa: E402

TEXTS = ["a photo of a cat", "A DOG, running!", "", "ünïcödé café 東京", "word " * 30, "x"]
FIXTURES = {  # name: (tokenizer, text length, image size, patch, resample, towers)
    "tf4-siglip-spiece": ("spiece", 16, 32, 8, 3, "both"),
    "tf4-siglip-gemma": ("gemma", 24, 32, 8, 2, "both"),
    "tf4-vision-only": (None, 16, 32, 8, 3, "vision"),
}


def build(out: Path, tokenizer: str | None, text_len: int, image_size: int, patch: int, resample: int, towers: str,
          seed: int) -> None:
    if out.exists():
        shutil.rmtree(out)
    tmp = tempfile.mkdtemp()  # kept until saved: the 4.x slow tokenizer re-reads its vocab file when copied
    if True:
        if tokenizer is not None:
            (make_spiece_tokenizer if tokenizer == "spiece" else make_gemma_tokenizer)(tmp, max_length=text_len)
            tok = AutoTokenizer.from_pretrained(tmp)
            vocab = len(tok)
        else:
            tok, vocab = None, 500
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    config = SiglipConfig(text_config={**tower, "vocab_size": vocab, "max_position_embeddings": text_len},
                          vision_config={**tower, "image_size": image_size, "patch_size": patch})
    torch.manual_seed(seed)
    model = SiglipModel(config).eval()
    with torch.no_grad():  # spread every tensor (init leaves some at 0/1) so every weight changes the output
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        model.logit_scale.fill_(np.log(10.0))
        model.logit_bias.fill_(-2.0)
    image_processor = SiglipImageProcessor(size={"height": image_size, "width": image_size}, resample=resample,
                                           image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    if towers == "vision":
        vision = SiglipVisionModel(config.vision_config).eval()
        vision.vision_model.load_state_dict(model.vision_model.state_dict())
        vision.save_pretrained(out, safe_serialization=True)
        image_processor.save_pretrained(out)
    else:
        model.save_pretrained(out, safe_serialization=True)
        SiglipProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(out)

    # Reference outputs, from the saved folder as a user would load it.
    ref: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(rng.uniform(-1, 1, (2, 3, image_size, image_size)).astype(np.float32))
    with torch.no_grad():
        if towers == "vision":
            vis = SiglipVisionModel.from_pretrained(out).eval()(pixel_values=pixels)
        else:
            loaded = SiglipModel.from_pretrained(out).eval()
            vis = loaded.vision_model(pixel_values=pixels)
            tok = AutoTokenizer.from_pretrained(out)
            enc = tok(TEXTS, padding="max_length", max_length=text_len, truncation=True, return_tensors="pt")
            ref["input_ids"] = enc["input_ids"].numpy()
            ref["text_pooled"] = loaded.text_model(input_ids=enc["input_ids"]).pooler_output.numpy()
            if "attention_mask" in enc:
                ref["attention_mask"] = enc["attention_mask"].numpy()
                ref["text_pooled_masked"] = loaded.text_model(**enc).pooler_output.numpy()
        ref["pixels"] = pixels.numpy()
        ref["image_pooled"] = vis.pooler_output.numpy()
        ref["image_tokens"] = vis.last_hidden_state.numpy()
    np.savez_compressed(out / "reference.npz", **ref)
    shutil.rmtree(tmp)
    print(f"{out.name}: transformers {transformers.__version__}, files {sorted(p.name for p in out.iterdir())}, "
          f"{sum(p.stat().st_size for p in out.iterdir()) / 1024:.0f} KB")


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
    assert transformers.__version__.startswith("4."), f"needs transformers 4.x, found {transformers.__version__}"
    for i, (name, args) in enumerate(FIXTURES.items()):
        build(root / name, *args, seed=i)


if __name__ == "__main__":
    main()
