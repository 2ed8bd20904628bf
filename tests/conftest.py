"""Tiny SigLIP checkpoints built on the fly: random-init transformers `SiglipModel`, a SentencePiece (or Gemma-style
tokenizer.json) tokenizer trained here, saved by the installed transformers' own `save_pretrained` (model and
processor), so the fixtures are in whatever layout that transformers writes. Nothing is downloaded."""

from __future__ import annotations

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
                    text_overrides: dict | None = None, towers: str = "both", fresh_tokenizer: bool = False) -> Path:
    """Save a random-weight SigLIP checkpoint into `folder` with the installed transformers' own save functions.

    towers "both": `SiglipModel.save_pretrained` + `SiglipProcessor(image_processor=SiglipImageProcessor(...),
    tokenizer=...).save_pretrained` (transformers 5.x: the image processor nested in processor_config.json, no
    preprocessor_config.json); "vision": `SiglipVisionModel` + `SiglipImageProcessor.save_pretrained`; "text":
    `SiglipTextModel` + the tokenizer's `save_pretrained`. The tokenizer is `AutoTokenizer.from_pretrained` of files
    laid out like the google/* repos (tests/tokenizer_fixtures.py); fresh_tokenizer=True instead builds
    `SiglipTokenizer(vocab_file=...)` from spiece.model alone, as a user would, so it returns an attention_mask.
    The default image size 34 with patch 7 leaves a 6-pixel remainder, like 384 px with patch 14.
    """
    import tempfile

    from transformers import AutoTokenizer, SiglipTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        (make_spiece_tokenizer if tokenizer == "spiece" else make_gemma_tokenizer)(tmp, max_length=text_len)
        vocab_size = _vocab_size(Path(tmp))
        if fresh_tokenizer:
            tok = SiglipTokenizer(vocab_file=str(Path(tmp) / "spiece.model"), model_max_length=text_len)
        else:
            tok = AutoTokenizer.from_pretrained(tmp)
        _build_and_save(folder, tok, vocab_size, text_len=text_len, image_size=image_size, patch_size=patch_size,
                        width=width, depth=depth, heads=heads, mlp=mlp, resample=resample, seed=seed,
                        vision_overrides=vision_overrides, text_overrides=text_overrides, towers=towers)
    return folder


def _build_and_save(folder, tok, vocab_size, *, text_len, image_size, patch_size, width, depth, heads, mlp, resample,
                    seed, vision_overrides, text_overrides, towers):
    from transformers import (SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor, SiglipTextModel,
                              SiglipVisionModel)

    tower = dict(hidden_size=width, intermediate_size=mlp, num_hidden_layers=depth, num_attention_heads=heads)
    config = SiglipConfig(
        text_config={**tower, "vocab_size": vocab_size, "max_position_embeddings": text_len, **(text_overrides or {})},
        vision_config={**tower, "image_size": image_size, "patch_size": patch_size, **(vision_overrides or {})},
    )
    torch.manual_seed(seed)
    model = SiglipModel(config).eval()
    with torch.no_grad():  # transformers' init leaves some tensors at 0/1; spread every tensor so all paths count
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        model.logit_scale.fill_(np.log(10.0))
        model.logit_bias.fill_(-2.0)
    image_processor = SiglipImageProcessor(size={"height": image_size, "width": image_size}, resample=resample,
                                           image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    if towers == "both":
        model.save_pretrained(folder, safe_serialization=True)
        SiglipProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(folder)
    elif towers == "vision":
        single = SiglipVisionModel(config.vision_config).eval()
        getattr(single, "vision_model", single).load_state_dict(model.vision_model.state_dict())  # 5.x: no wrapper
        single.save_pretrained(folder, safe_serialization=True)
        image_processor.save_pretrained(folder)
    elif towers == "text":
        single = SiglipTextModel(config.text_config).eval()
        getattr(single, "text_model", single).load_state_dict(model.text_model.state_dict())
        single.save_pretrained(folder, safe_serialization=True)
        tok.save_pretrained(folder)
    else:
        raise ValueError(f"towers must be both, vision or text, got {towers!r}")


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
