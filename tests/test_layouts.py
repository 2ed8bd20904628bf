"""Checkpoint layouts, detected from the files present: transformers 5.x (written here by the installed transformers'
own save functions), transformers 4.x (committed fixtures written by transformers 4.57, tests/fixtures/tf4-*), for
SiglipModel, vision-only and text-only checkpoints, SentencePiece and tokenizer.json tokenizers.

Parity, fp32, worst |Δ| printed: pooled and tokens ≤ 1e-4 against transformers (the installed 5.x, live) and against
the outputs transformers 4.57 stored beside each 4.x fixture; token ids identical.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import siglite
from siglite.checkpoints.layout import PREPROCESSOR, PROCESSOR, detect, read_image_processor
from siglite.errors import LoadError

FIXTURES = Path(__file__).parent / "fixtures"
TF4 = ["tf4-siglip-spiece", "tf4-siglip-gemma", "tf4-vision-only"]
TEXTS = ["a photo of a cat", "A DOG, running!", "", "ünïcödé café 東京", "word " * 30, "x"]  # = make_tf4_fixtures.py
ATOL = 1e-4


def _worst(name, ours, ref, atol=ATOL):
    ref = ref.detach().float().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    assert ours.shape == ref.shape, f"{name}: shape {ours.shape} != reference {ref.shape}"
    diff = float(np.abs(ours - ref).max())
    print(f"{name}: worst |Δ| = {diff:.2e} (atol {atol:.0e})")
    assert diff <= atol, f"{name}: worst |Δ| {diff:.3e} > {atol:.0e}"
    return diff


def test_installed_transformers_writes_a_layout_we_read(tiny_spiece, tiny_gemma):
    """Fails by name when a transformers release changes where `SiglipProcessor.save_pretrained` puts the image
    processor: today (5.x) nested in processor_config.json, with no preprocessor_config.json."""
    import transformers

    for folder in (tiny_spiece, tiny_gemma):
        assert detect(folder) == "transformers"
        names = sorted(p.name for p in folder.iterdir())
        assert (folder / PROCESSOR).is_file() or (folder / PREPROCESSOR).is_file(), \
            f"transformers {transformers.__version__} saved {names}: neither {PROCESSOR} nor {PREPROCESSOR}"
        assert read_image_processor(folder)["size"]["height"] in (32, 34), names
        print(f"transformers {transformers.__version__} SiglipProcessor.save_pretrained -> {names}")


@pytest.mark.parametrize("name", TF4)
def test_tf4_fixture_parity(name):
    """A checkpoint written by transformers 4.57 loads; siglite equals transformers 4.57 (stored) and the installed
    transformers (live) on the same folder, as trained (input_ids only) and with text_mask=True."""
    from transformers import AutoTokenizer, SiglipModel, SiglipVisionModel

    folder = FIXTURES / name
    ref = np.load(folder / "reference.npz")
    assert (folder / PREPROCESSOR).is_file() and not (folder / PROCESSOR).is_file()  # the 4.x layout
    vision_only = name == "tf4-vision-only"
    live = (SiglipVisionModel if vision_only else SiglipModel).from_pretrained(folder).eval()
    model = siglite.load(folder, engine="torch", device="cpu")
    pixels = torch.from_numpy(ref["pixels"])
    pooled, tokens = model.engine.encode_image(ref["pixels"], tokens=True)
    with torch.no_grad():
        want = live(pixel_values=pixels) if vision_only else live.vision_model(pixel_values=pixels)
    _worst(f"{name} image pooled vs 4.57", pooled, ref["image_pooled"])
    _worst(f"{name} image tokens vs 4.57", tokens, ref["image_tokens"])
    _worst(f"{name} image pooled vs installed", pooled, want.pooler_output)
    _worst(f"{name} image tokens vs installed", tokens, want.last_hidden_state)
    if vision_only:
        assert model.tokenizer is None
        return
    ids, mask = model.tokenize(TEXTS)
    assert mask is None  # as trained: no padding mask, whatever the tokenizer returns
    np.testing.assert_array_equal(ids, ref["input_ids"])
    L = live.config.text_config.max_position_embeddings
    enc = AutoTokenizer.from_pretrained(folder)(TEXTS, padding="max_length", max_length=L, truncation=True,
                                                return_tensors="pt")
    np.testing.assert_array_equal(ids, enc["input_ids"].numpy())
    with torch.no_grad():
        live_trained = live.text_model(input_ids=enc["input_ids"]).pooler_output
    _worst(f"{name} text pooled (as trained) vs 4.57", model.text_features(TEXTS), ref["text_pooled"])
    _worst(f"{name} text pooled (as trained) vs installed", model.text_features(TEXTS), live_trained)
    masked = siglite.load(folder, engine="torch", device="cpu", text_mask=True)
    if "attention_mask" in ref:
        _, got_mask = masked.tokenize(TEXTS)
        np.testing.assert_array_equal(got_mask, ref["attention_mask"])
        with torch.no_grad():
            live_masked = live.text_model(**enc).pooler_output
        _worst(f"{name} text pooled (text_mask) vs 4.57", masked.text_features(TEXTS), ref["text_pooled_masked"])
        _worst(f"{name} text pooled (text_mask) vs installed", masked.text_features(TEXTS), live_masked)
    else:  # the tokenizer returns no mask (google/siglip configs): both settings are the same function
        _worst(f"{name} text pooled (text_mask, no mask returned)", masked.text_features(TEXTS), ref["text_pooled"])


@pytest.mark.parametrize("towers", ["vision", "text"])
def test_single_tower_checkpoints_5x(towers, tmp_path):
    """SiglipVisionModel + SiglipImageProcessor.save_pretrained, SiglipTextModel + tokenizer.save_pretrained."""
    from conftest import make_checkpoint
    from transformers import AutoTokenizer, SiglipTextModel, SiglipVisionModel

    folder = make_checkpoint(tmp_path / towers, towers=towers, image_size=32, patch_size=8)
    model = siglite.load(folder, engine="torch", device="cpu")
    if towers == "vision":
        ref = SiglipVisionModel.from_pretrained(folder).eval()
        pixels = torch.rand(2, 3, 32, 32) * 2 - 1
        pooled, tokens = model.engine.encode_image(pixels.numpy(), tokens=True)
        with torch.no_grad():
            want = ref(pixel_values=pixels)
        _worst("5.x vision-only pooled", pooled, want.pooler_output)
        _worst("5.x vision-only tokens", tokens, want.last_hidden_state)
        assert model.tokenizer is None
    else:
        ref = SiglipTextModel.from_pretrained(folder).eval()
        ids = AutoTokenizer.from_pretrained(folder)(TEXTS, padding="max_length", max_length=16, truncation=True,
                                                    return_tensors="pt")["input_ids"]
        np.testing.assert_array_equal(model.tokenize(TEXTS)[0], ids.numpy())
        with torch.no_grad():
            want = ref(input_ids=ids).pooler_output
        _worst("5.x text-only pooled", model.text_features(TEXTS), want)
        assert model.image_config is None


def test_text_mask_option_on_a_tokenizer_that_returns_a_mask(tmp_path):
    """A SiglipTokenizer built from spiece.model alone returns an attention_mask (transformers' class default). The
    default ignores it (as trained, = `text_model(input_ids=ids)`); text_mask=True applies it (= `text_model(**enc)`).
    The two are different functions: the gap is printed."""
    from conftest import make_checkpoint
    from transformers import AutoTokenizer, SiglipModel

    folder = make_checkpoint(tmp_path / "fresh", fresh_tokenizer=True, image_size=32, patch_size=8)
    enc = AutoTokenizer.from_pretrained(folder)(TEXTS, padding="max_length", max_length=16, truncation=True,
                                                return_tensors="pt")
    assert "attention_mask" in enc
    ref = SiglipModel.from_pretrained(folder).eval()
    with torch.no_grad():
        trained, masked = ref.text_model(input_ids=enc["input_ids"]).pooler_output, ref.text_model(**enc).pooler_output
    default = siglite.load(folder, engine="torch", device="cpu")
    option = siglite.load(folder, engine="torch", device="cpu", text_mask=True)
    _worst("fresh SiglipTokenizer: default = text_model(input_ids)", default.text_features(TEXTS), trained)
    _worst("fresh SiglipTokenizer: text_mask=True = text_model(**enc)", option.text_features(TEXTS), masked)
    gap = float((trained - masked).abs().max())
    print(f"as trained vs masked text pooled: max |Δ| = {gap:.3f}")
    assert gap > 1e-2


def test_missing_image_processor_is_named(tiny_spiece, tmp_path):
    folder = tmp_path / "noproc"
    shutil.copytree(tiny_spiece, folder)
    (folder / PROCESSOR).unlink(missing_ok=True)
    (folder / PREPROCESSOR).unlink(missing_ok=True)
    with pytest.raises(LoadError, match=r"no image preprocessing config \(preprocessor_config\.json missing, and no "
                                        r"processor_config\.json"):
        siglite.load(folder)


def test_not_a_checkpoint_names_both_layouts(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(LoadError, match=r"no config\.json .* no open_clip_config\.json"):
        siglite.load(tmp_path)


def test_nested_processor_wins_over_flat(tiny_spiece, tmp_path):
    """transformers 5.x reads the image_processor nested in processor_config.json before preprocessor_config.json."""
    import json

    folder = tmp_path / "both"
    shutil.copytree(tiny_spiece, folder)
    flat = {**read_image_processor(folder), "size": {"height": 99, "width": 99}}
    (folder / PREPROCESSOR).write_text(json.dumps(flat))
    assert read_image_processor(folder)["size"]["height"] == 34
    assert siglite.load(folder).image_config.height == 34


@pytest.mark.parametrize("spec_name", ["siglip-base-patch16-224", "clip-vit-base-patch32"])
def test_save_checkpoint_of_a_text_only_model_is_a_flat_text_config(spec_name, tmp_path):
    """siglite's own writer gives a single text tower the flat config transformers' *TextModel saves, which
    transformers and siglite both load (as they do a vision-only one)."""
    import dataclasses

    import torch
    import transformers

    from siglite.checkpoints import random_model, save_checkpoint
    from siglite.registry import get_spec

    spec = get_spec(spec_name)
    small = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2)
    spec = dataclasses.replace(spec, text={**spec.text, **small, "vocab_size": 100},
                               vision={**spec.vision, **small, "image_size": 32})
    model = random_model(spec, seed=1).eval()
    model.vision = None
    save_checkpoint(model, tmp_path, spec)
    config = json.loads((tmp_path / "config.json").read_text())
    assert "text_config" not in config and config["model_type"].endswith("text_model")
    cls = getattr(transformers, config["architectures"][0])
    ref = cls.from_pretrained(str(tmp_path)).eval()
    ids = torch.randint(0, 100, (2, spec.text["max_position_embeddings"]))
    ids[:, -1] = 99  # CLIP pools at the highest id (its EOS rule without eos_token_id)
    with torch.no_grad():
        want = ref(input_ids=ids)
        want = want.text_embeds if hasattr(want, "text_embeds") else want.pooler_output
        got = model.text(ids)[1]
    print(f"\n{spec_name} text-only save: worst |d| vs {cls.__name__} {float((got - want).abs().max()):.1e}")
    assert torch.allclose(got, want, atol=1e-4)
