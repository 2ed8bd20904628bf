"""Golden parity with transformers' SiglipModel + its processor, on checkpoints built in conftest.

fp32 tolerances (stated, and the worst difference printed): last_hidden_state and pooler_output |Δ| ≤ 1e-4,
sigmoid probabilities |Δ| ≤ 1e-5, token ids identical.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import siglite
from siglite.registry import get_spec

ATOL_FEATURES = 1e-4
ATOL_PROBS = 1e-5
TEXTS = ["a photo of a cat", "A DOG, running!", "", "ünïcödé café 東京 🐱", "word " * 40, "x"]


def _reference(folder):
    from transformers import AutoTokenizer, SiglipModel
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    model = SiglipModel.from_pretrained(folder, attn_implementation="sdpa").eval()
    return model, SiglipImageProcessorPil.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def _maxdiff(name, ours, ref, atol):
    ref = ref.detach().float().numpy() if isinstance(ref, torch.Tensor) else ref
    assert ours.shape == ref.shape, f"{name}: shape {ours.shape} != reference {ref.shape}"
    diff = float(np.abs(ours - ref).max())
    print(f"{name}: worst |Δ| = {diff:.2e} (atol {atol:.0e})")
    assert diff <= atol, f"{name}: worst |Δ| {diff:.3e} > {atol:.0e}"
    return diff


@pytest.mark.parametrize("fixture", ["tiny_spiece", "tiny_gemma"])
def test_image_parity_mixed_sizes(fixture, request, sample_images):
    folder = request.getfixturevalue(fixture)
    ref_model, processor, _ = _reference(folder)
    model = siglite.load(folder)
    from PIL import Image

    pil = [Image.open(p) for p in sample_images]
    pixels = processor(images=pil, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ref = ref_model.vision_model(pixel_values=pixels)
    _maxdiff(f"{fixture} pooler_output", model.image_features(sample_images, batch_size=3), ref.pooler_output,
             ATOL_FEATURES)
    tokens = model.image_features(sample_images, tokens=True)
    grid = ref_model.config.vision_config.image_size // ref_model.config.vision_config.patch_size
    assert tokens.shape[1] == grid * grid
    _maxdiff(f"{fixture} last_hidden_state", tokens, ref.last_hidden_state, ATOL_FEATURES)


def _text_inputs(tokenizer, texts, L, text_mask):
    """The transformers call each siglite setting equals: as trained (default) = input_ids only; text_mask=True = the
    tokenizer's whole output (input_ids + attention_mask when it returns one), as transformers 5 pipelines pass it."""
    inputs = tokenizer(texts, padding="max_length", max_length=L, truncation=True, return_tensors="pt")
    return dict(inputs) if text_mask else {"input_ids": inputs["input_ids"]}


@pytest.mark.parametrize("text_mask", [False, True], ids=["as_trained", "text_mask"])
@pytest.mark.parametrize("fixture", ["tiny_spiece", "tiny_gemma"])
def test_text_parity(fixture, text_mask, request):
    folder = request.getfixturevalue(fixture)
    ref_model, _, tokenizer = _reference(folder)
    model = siglite.load(folder, text_mask=text_mask)
    L = ref_model.config.text_config.max_position_embeddings
    inputs = _text_inputs(tokenizer, TEXTS, L, text_mask)
    ids, mask = model.tokenize(TEXTS)
    assert ids.shape == (len(TEXTS), L)
    np.testing.assert_array_equal(ids, inputs["input_ids"].numpy())
    assert (mask is None) == ("attention_mask" not in inputs)
    with torch.no_grad():
        ref = ref_model.text_model(**inputs)
    _maxdiff(f"{fixture} text pooler_output ({'text_mask' if text_mask else 'as trained'})",
             model.text_features(TEXTS, batch_size=4), ref.pooler_output, ATOL_FEATURES)


@pytest.mark.parametrize("text_mask", [False, True], ids=["as_trained", "text_mask"])
@pytest.mark.parametrize("fixture", ["tiny_spiece", "tiny_gemma"])
def test_classify_parity(fixture, text_mask, request, sample_images):
    folder = request.getfixturevalue(fixture)
    ref_model, processor, tokenizer = _reference(folder)
    model = siglite.load(folder, text_mask=text_mask)
    from PIL import Image

    labels = ["cat", "dog", "red car", "gradient"]
    prompts = [f"This is a photo of {label}." for label in labels]
    L = ref_model.config.text_config.max_position_embeddings
    text_in = _text_inputs(tokenizer, prompts, L, text_mask)
    pixels = processor(images=[Image.open(p) for p in sample_images], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ref = torch.sigmoid(ref_model(pixel_values=pixels, **text_in).logits_per_image)
    probs = model.classify(sample_images, labels)
    assert probs.shape == (len(sample_images), len(labels))
    _maxdiff(f"{fixture} probabilities ({'text_mask' if text_mask else 'as trained'})", probs, ref, ATOL_PROBS)


def test_full_size_so400m_384_geometry(tmp_path):
    """The real so400m-384 vision shape (width 1152, 16 heads, MLP 4304, 384 px / patch 14 -> 27x27 = 729 tokens and a
    6-pixel remainder) with random weights and one block, against transformers."""
    from conftest import make_checkpoint

    spec = get_spec("siglip-so400m-patch14-384")
    v = spec.vision
    folder = make_checkpoint(tmp_path / "so400m", depth=1, width=v["hidden_size"], heads=v["num_attention_heads"],
                             mlp=v["intermediate_size"], image_size=v["image_size"], patch_size=v["patch_size"],
                             text_len=spec.text["max_position_embeddings"])
    from transformers import SiglipModel

    ref_model = SiglipModel.from_pretrained(folder).eval()
    model = siglite.load(folder)
    pixels = np.random.default_rng(0).uniform(-1, 1, (2, 3, 384, 384)).astype(np.float32)
    pooled, tokens = model.engine.encode_image(pixels, tokens=True)
    with torch.no_grad():
        ref = ref_model.vision_model(pixel_values=torch.from_numpy(pixels))
    assert tokens.shape == (2, 729, 1152)
    _maxdiff("so400m-384 last_hidden_state", tokens, ref.last_hidden_state, ATOL_FEATURES)
    _maxdiff("so400m-384 pooler_output", pooled, ref.pooler_output, ATOL_FEATURES)


def test_bf16_close_to_fp32(tiny_spiece, sample_images):
    fp32 = siglite.load(tiny_spiece).image_features(sample_images)
    bf16 = siglite.load(tiny_spiece, dtype="bfloat16").image_features(sample_images)
    cos = (fp32 * bf16).sum(-1) / np.linalg.norm(fp32, axis=-1) / np.linalg.norm(bf16, axis=-1)
    print(f"bf16 vs fp32 pooled cosine min {cos.min():.5f}")
    assert cos.min() > 0.99


def test_encode_images_skips_bad_inputs(tiny_spiece, sample_images, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    model = siglite.load(tiny_spiece)
    inputs = [sample_images[0], bad, sample_images[1], tmp_path / "missing.png"]
    out = model.encode_images(inputs, on_error="skip")
    assert out.indices == [0, 2]
    assert [i for i, _ in out.failures] == [1, 3]
    assert "broken.jpg" in out.failures[0][1]
    np.testing.assert_allclose(out.features, model.image_features([sample_images[0], sample_images[1]]), atol=1e-6)
    with pytest.raises(siglite.ImageError, match="broken.jpg"):
        model.image_features(inputs)


def test_letterbox_mode_is_the_seed_recipe(tiny_spiece, sample_images):
    """preprocess="letterbox" feeds the model exactly the seed's pixels (shared/seeds/000_b64b46afb15a8577.txt,
    `preprocess`, spelled out here with cv2 from the file on disk), which differ from the resize mode's."""
    import cv2

    model = siglite.load(tiny_spiece)
    pngs = [sample_images[1], sample_images[2]]  # RGB 97x41 and grey 30x30; PNG so both decoders read equal pixels
    T = model.image_config.height
    seed = []
    for path in pngs:
        image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        h, w = image.shape[:2]
        scale = T / max(h, w)
        new_h, new_w = int(h * scale), int(w * scale)
        resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
        top, left = (T - new_h) // 2, (T - new_w) // 2
        padded = cv2.copyMakeBorder(resized, top, T - new_h - top, left, T - new_w - left, cv2.BORDER_CONSTANT,
                                    value=[127, 127, 127])
        seed.append(np.transpose(padded, (2, 0, 1)).astype(np.float32) / 127.5 - 1.0)
    want = model.engine.encode_image(np.stack(seed))[0]
    a = model.image_features(pngs, preprocess="letterbox")
    b = model.image_features(pngs, preprocess="resize")
    np.testing.assert_array_equal(a, want)
    assert np.abs(a - b).max() > 1e-3  # and the two modes are different inputs


def test_bgr_arrays(tiny_spiece, sample_images):
    from PIL import Image

    model = siglite.load(tiny_spiece)
    rgb = np.asarray(Image.open(sample_images[0]).convert("RGB"))
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    np.testing.assert_allclose(model.image_features(siglite.from_bgr(bgr)), model.image_features(rgb), atol=1e-6)


def test_list_models_has_the_deployed_eight():
    names = {s.name for s in siglite.list_models()}
    for name in ["siglip-base-patch16-224", "siglip-base-patch16-384", "siglip-base-patch16-512",
                 "siglip-large-patch16-256", "siglip-large-patch16-384", "siglip-so400m-patch14-224",
                 "siglip-so400m-patch14-384", "siglip-so400m-patch16-256-i18n"]:
        assert name in names
    so400m = get_spec("google/siglip-so400m-patch14-384")
    assert so400m.vision_config.grid == 27 and so400m.vision_config.num_patches == 729
