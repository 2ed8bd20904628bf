"""Tiny SigLIP checkpoints built on the fly: random-init transformers `SiglipModel`, a SentencePiece (or Gemma-style
tokenizer.json) tokenizer trained here, and a preprocessor config, saved in the hub layout. Nothing is downloaded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tokenizer_fixtures import make_gemma_tokenizer, make_spiece_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _vocab_size(folder: Path) -> int:
    if (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab_size()
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(folder / "spiece.model")).get_piece_size()


def make_checkpoint(folder: Path, *, tokenizer: str = "spiece", text_len: int = 16, image_size: int = 34,
                    patch_size: int = 7, width: int = 32, depth: int = 2, heads: int = 4, mlp: int = 80,
                    resample: int = 3, seed: int = 0, vision_overrides: dict | None = None,
                    text_overrides: dict | None = None) -> Path:
    """Save a random-weight SiglipModel checkpoint with tokenizer and preprocessor config into `folder`.

    The default image size 34 with patch 7 leaves a 6-pixel remainder, like 384 px with patch 14.
    """
    from transformers import SiglipConfig, SiglipModel

    folder.mkdir(parents=True, exist_ok=True)
    (make_spiece_tokenizer if tokenizer == "spiece" else make_gemma_tokenizer)(folder, max_length=text_len)
    tower = dict(hidden_size=width, intermediate_size=mlp, num_hidden_layers=depth, num_attention_heads=heads)
    config = SiglipConfig(
        text_config={**tower, "vocab_size": _vocab_size(folder), "max_position_embeddings": text_len,
                     **(text_overrides or {})},
        vision_config={**tower, "image_size": image_size, "patch_size": patch_size, **(vision_overrides or {})},
    )
    torch.manual_seed(seed)
    model = SiglipModel(config).eval()
    with torch.no_grad():  # transformers' init leaves some tensors at 0/1; spread every tensor so all paths count
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        model.logit_scale.fill_(np.log(10.0))
        model.logit_bias.fill_(-2.0)
    model.save_pretrained(folder, safe_serialization=True)
    preprocessor = {
        "image_processor_type": "SiglipImageProcessor", "processor_class": "SiglipProcessor",
        "do_resize": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True,
        "rescale_factor": 1 / 255, "resample": resample, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "size": {"height": image_size, "width": image_size},
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    return folder


@pytest.fixture(scope="module")
def one_thread():
    """Tiny graphs are overhead-bound: on a shared 2-core machine a second worker thread mostly waits for the
    scheduler, so these tests run single-threaded (torch and the engines, via SIGLITE_THREADS)."""
    threads = torch.get_num_threads()
    mp = pytest.MonkeyPatch()
    mp.setenv("SIGLITE_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    mp.undo()


@pytest.fixture(scope="session")
def tiny_spiece(tmp_path_factory) -> Path:
    """SentencePiece tokenizer, text length 16, 34 px / patch 7."""
    return make_checkpoint(tmp_path_factory.mktemp("tiny_spiece"), tokenizer="spiece", text_len=16)


@pytest.fixture(scope="session")
def tiny_gemma(tmp_path_factory) -> Path:
    """Gemma-style tokenizer.json, text length 64, bilinear resize (as SigLIP 2), 32 px / patch 8."""
    return make_checkpoint(tmp_path_factory.mktemp("tiny_gemma"), tokenizer="gemma", text_len=64, image_size=32,
                           patch_size=8, resample=2, seed=1)


@pytest.fixture(scope="session")
def sample_images(tmp_path_factory) -> list[Path]:
    """Real files of mixed sizes and modes: JPEG, PNG, grayscale, RGBA."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w, mode, ext) in enumerate([(48, 64, "RGB", "jpg"), (97, 41, "RGB", "png"), (30, 30, "L", "png"),
                                           (120, 160, "RGBA", "png"), (17, 200, "RGB", "jpg")]):
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), (xx + yy) % 256], -1)
        arr = np.clip(base + rng.integers(-30, 30, base.shape), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr)
        if mode == "L":
            img = img.convert("L")
        elif mode == "RGBA":
            img = img.convert("RGBA")
            img.putalpha(Image.fromarray((xx * 255 // (w - 1)).astype(np.uint8)))
        path = folder / f"img{i}.{ext}"
        img.save(path)
        paths.append(path)
    return paths
