"""Load hub-layout folders with transformers 4.x and store its outputs, for tests/test_convert.py.

    /work/refenv-tf4/bin/python tests/reference/tf4_outputs.py OUT.npz FOLDER [FOLDER ...]

Per folder i: `{i}_ids` (AutoTokenizer, padding="max_length" to the text length, truncation), `{i}_text` (text
pooler_output from input_ids only: SigLIP as trained), `{i}_pixels` (AutoImageProcessor on a fixed 45x61 image),
`{i}_image` (vision pooler_output on those pixels).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import (AutoImageProcessor, AutoProcessor, AutoTokenizer, SiglipModel, SiglipTextModel,
                          SiglipVisionModel)

CLASSES = {"siglip": SiglipModel, "siglip_vision_model": SiglipVisionModel, "siglip_text_model": SiglipTextModel}

TEXTS = ["a photo of a cat", "A DOG, running!", "", "ünïcödé café 東京", "word " * 30]


def main() -> None:
    out, folders = sys.argv[1], sys.argv[2:]
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 61, 3), dtype=np.uint8))
    result = {"version": np.array(transformers.__version__)}
    for i, folder in enumerate(folders):
        model_type = json.loads((Path(folder) / "config.json").read_text())["model_type"]  # 4.x AutoConfig lacks
        model = CLASSES[model_type].from_pretrained(folder).eval()                             # siglip_text_model
        with torch.no_grad():
            if model_type != "siglip_text_model":
                pixels = AutoImageProcessor.from_pretrained(folder)(images=[image], return_tensors="pt")["pixel_values"]
                vision = model if model_type == "siglip_vision_model" else model.vision_model
                result[f"{i}_pixels"] = pixels.numpy()
                result[f"{i}_image"] = vision(pixel_values=pixels).pooler_output.numpy()
            if model_type != "siglip_vision_model":
                if model_type == "siglip":
                    AutoProcessor.from_pretrained(folder)  # the processor (image + tokenizer) loads as a whole too
                text_config = model.config.text_config if model_type == "siglip" else model.config
                L = text_config.max_position_embeddings
                ids = AutoTokenizer.from_pretrained(folder)(TEXTS, padding="max_length", max_length=L,
                                                            truncation=True, return_tensors="pt")["input_ids"]
                text = model.text_model if model_type == "siglip" else model
                result[f"{i}_ids"] = ids.numpy()
                result[f"{i}_text"] = text(input_ids=ids).pooler_output.numpy()
    np.savez(out, **result)


if __name__ == "__main__":
    main()
