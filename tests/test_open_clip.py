"""The open_clip / timm hub format (open_clip_config.json + open_clip_model.safetensors), against open_clip itself.

The fixtures (tests/fixtures/open_clip-siglip: v1 config, exact-GELU MLPs, SentencePiece; open_clip-siglip2: SigLIP 2
config, tanh-GELU, Gemma tokenizer.json, bilinear) were written by open_clip's own `save_for_hf` with
tests/reference/make_open_clip_fixtures.py, which also stored open_clip's `encode_image` / `encode_text`, token ids and
preprocessing on fixed inputs. open_clip needs torchvision, which does not import beside the main CPU torch build, so
the comparison here is with those stored outputs; `test_live_open_clip` reruns open_clip when it imports.

fp32, worst |Δ| printed: pooled and tokens ≤ 1e-4, probabilities ≤ 1e-5, ids identical, pixels ≤ 1e-5.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import siglite
from siglite.checkpoints import open_clip as oc
from siglite.errors import LoadError

FIXTURES = Path(__file__).parent / "fixtures"
NAMES = ["open_clip-siglip", "open_clip-siglip2", "open_clip-siglip-noproj"]  # noproj: text proj_type "none" (i18n)
# = make_open_clip_fixtures.py TEXTS / TINY_TIMM_SIZES (timm VisionTransformer args -> siglite's size rows)
TEXTS = ["a photo of a cat", "A DOG, running!", "", "ünïcödé café 東京", "word " * 30, "x", "snake_case &amp; more"]
TINY_SIZES = {"sigtiny": dict(width=32, depth=2, heads=4, mlp_ratio=2.0, act="gelu"),
              "sigtinyopt": dict(width=32, depth=2, heads=4, mlp_ratio=2.5, act="gelu_pytorch_tanh")}
ATOL, ATOL_PROBS = 1e-4, 1e-5


@pytest.fixture(autouse=True)
def tiny_timm_sizes(monkeypatch):
    """The fixtures' trunks are tiny sizes no one publishes: add their rows as a new timm size would be added."""
    for size, row in TINY_SIZES.items():
        monkeypatch.setitem(oc.TIMM_SIGLIP_SIZES, size, row)


def _worst(name, ours, ref, atol=ATOL):
    ref = np.asarray(ref)
    assert ours.shape == ref.shape, f"{name}: shape {ours.shape} != reference {ref.shape}"
    diff = float(np.abs(ours - ref).max())
    print(f"{name}: worst |Δ| = {diff:.2e} (atol {atol:.0e})")
    assert diff <= atol, f"{name}: worst |Δ| {diff:.3e} > {atol:.0e}"
    return diff


def _check(model, ref, name):
    from siglite.preprocess.image import preprocess_batch

    ids, mask = model.tokenize(TEXTS)
    assert mask is None
    np.testing.assert_array_equal(ids, ref["input_ids"])
    pooled, tokens = model.engine.encode_image(ref["pixels"], tokens=True)
    _worst(f"{name} encode_image", pooled, ref["image_pooled"])
    _worst(f"{name} trunk tokens", tokens, ref["image_tokens"])
    text = model.text_features(TEXTS)
    _worst(f"{name} encode_text", text, ref["text_pooled"])
    probs = 1 / (1 + np.exp(-model.logits(pooled, text)))
    _worst(f"{name} probabilities", probs, ref["probs"], ATOL_PROBS)
    pixels, _, _ = preprocess_batch([ref["image_uint8"]], model.image_config, "resize")
    _worst(f"{name} preprocessing", pixels[0], ref["image_preprocessed"], 1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_open_clip_fixture_parity(name):
    folder = FIXTURES / name
    model = siglite.load(folder, engine="torch", device="cpu")
    assert model.config["vision_config"]["hidden_act"] == ("gelu_pytorch_tanh" if name.endswith("2") else "gelu")
    _check(model, np.load(folder / "reference.npz"), name)


def test_activation_follows_the_config(monkeypatch):
    """v1 timm trunks use exact GELU; running the tanh form (transformers' SigLIP default) is measurably further from
    open_clip, so following the config is what the parity above rests on."""
    ref = np.load(FIXTURES / "open_clip-siglip" / "reference.npz")
    right = siglite.load(FIXTURES / "open_clip-siglip", engine="torch", device="cpu")
    monkeypatch.setitem(oc.TIMM_SIGLIP_SIZES, "sigtiny", {**TINY_SIZES["sigtiny"], "act": "gelu_pytorch_tanh"})
    wrong = siglite.load(FIXTURES / "open_clip-siglip", engine="torch", device="cpu")
    d_right = float(np.abs(right.engine.encode_image(ref["pixels"], tokens=True)[1] - ref["image_tokens"]).max())
    d_wrong = float(np.abs(wrong.engine.encode_image(ref["pixels"], tokens=True)[1] - ref["image_tokens"]).max())
    print(f"trunk tokens vs open_clip: exact GELU {d_right:.2e}, tanh GELU {d_wrong:.2e}")
    assert d_wrong > 10 * max(d_right, 1e-7)


def test_pickle_weights_need_opt_in(tmp_path):
    from safetensors.torch import load_file

    folder = tmp_path / "bin"
    shutil.copytree(FIXTURES / "open_clip-siglip", folder)
    torch.save(load_file(folder / "open_clip_model.safetensors"), folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_model.safetensors").unlink()
    with pytest.raises(LoadError, match=r"open_clip_pytorch_model\.bin: pickle checkpoints"):
        siglite.load(folder)
    _check(siglite.load(folder, engine="torch", device="cpu", allow_pickle=True), np.load(folder / "reference.npz"),
           "open_clip-siglip (.bin)")


def test_tokenizer_from_hub_cache_else_clear_error(tmp_path, monkeypatch):
    """No tokenizer files beside the weights: the hf_tokenizer_name repo from the huggingface_hub cache, offline."""
    from huggingface_hub import constants

    folder = tmp_path / "weights-only"
    shutil.copytree(FIXTURES / "open_clip-siglip", folder)
    for f in ("spiece.model", "tokenizer_config.json"):
        (folder / f).unlink()
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(LoadError, match=r"tokenizer 'siglite-tests/open_clip-siglip-tokenizer' .* not in the "
                                        r"huggingface_hub cache"):
        siglite.load(folder)
    repo = cache / "models--siglite-tests--open_clip-siglip-tokenizer"
    commit = "1" * 40
    (repo / "snapshots" / commit).mkdir(parents=True)
    for f in ("spiece.model", "tokenizer_config.json"):
        shutil.copy(FIXTURES / "open_clip-siglip" / f, repo / "snapshots" / commit / f)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    _check(siglite.load(folder, engine="torch", device="cpu"), np.load(folder / "reference.npz"),
           "open_clip-siglip (cached tokenizer)")


def test_weight_errors_name_the_key(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "bad"
    shutil.copytree(FIXTURES / "open_clip-siglip", folder)
    path = folder / "open_clip_model.safetensors"
    good = load_file(path)
    save_file({**good, "text.text_projection.weight": torch.zeros(5, 5)}, path)
    with pytest.raises(LoadError, match=r"text\.text_projection\.weight has shape \(5, 5\)"):
        siglite.load(folder)
    save_file({k: v for k, v in good.items() if k != "visual.trunk.attn_pool.latent"}, path)
    with pytest.raises(LoadError, match=r"missing weight visual\.trunk\.attn_pool\.latent"):
        siglite.load(folder)
    save_file({**good, "visual.trunk.extra.weight": torch.zeros(3)}, path)
    with pytest.raises(LoadError, match=r"unused weight.*visual\.trunk\.extra\.weight"):
        siglite.load(folder)


def test_unknown_trunk_is_a_clear_error(monkeypatch):
    monkeypatch.delitem(oc.TIMM_SIGLIP_SIZES, "sigtiny")
    with pytest.raises(LoadError, match=r"timm model 'vit_sigtiny_patch8_siglip_32' is not a known SigLIP trunk"):
        siglite.load(FIXTURES / "open_clip-siglip")


@pytest.mark.parametrize("name", NAMES)
def test_live_open_clip(name):
    """Rerun open_clip on the fixture folder when it imports (it needs torchvision, which does not import beside the
    main CPU torch build): `create_model_from_pretrained("local-dir:...")`, its tokenizer, `encode_image/text`."""
    try:
        import open_clip
    except Exception as e:  # ImportError, or torchvision's RuntimeError against a mismatched torch
        pytest.skip(f"open_clip does not import here ({type(e).__name__}: {str(e).splitlines()[0][:80]}); "
                    "test_open_clip_fixture_parity checks the outputs open_clip stored")
    import importlib.util
    import sys

    import timm

    spec = importlib.util.spec_from_file_location("make_open_clip_fixtures", Path(__file__).parent / "reference" /
                                                  "make_open_clip_fixtures.py")
    make = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))  # timm's registry looks it up
    spec.loader.exec_module(make)
    for size in make.TINY_TIMM_SIZES:  # the tiny trunks, as the fixture script registered them with timm
        if f"vit_{size}_patch8_siglip_32" not in timm.list_models():
            make._register(size)
    folder = FIXTURES / name
    ref_model, _ = open_clip.create_model_from_pretrained(f"local-dir:{folder}")
    ref_model.eval()
    ids = open_clip.get_tokenizer(f"local-dir:{folder}")(TEXTS)
    pixels = torch.from_numpy(np.load(folder / "reference.npz")["pixels"])
    with torch.no_grad():
        img, txt = ref_model.encode_image(pixels).numpy(), ref_model.encode_text(ids).numpy()
    model = siglite.load(folder, engine="torch", device="cpu")
    np.testing.assert_array_equal(model.tokenize(TEXTS)[0], ids.numpy())
    _worst(f"{name} live open_clip {open_clip.__version__} encode_image", model.engine.encode_image(pixels.numpy())[0],
           img)
    _worst(f"{name} live open_clip encode_text", model.text_features(TEXTS), txt)
