"""The open_clip / timm hub format (open_clip_config.json + open_clip_model.safetensors), against open_clip itself.

The fixtures (tests/fixtures/open_clip-siglip: v1 config, exact-GELU MLPs, SentencePiece; open_clip-siglip2: SigLIP 2
config, tanh-GELU, Gemma tokenizer.json, bilinear) were written by open_clip's own `save_for_hf` with
tests/reference/make_open_clip_fixtures.py, which also stored open_clip's `encode_image` / `encode_text`, token ids and
preprocessing on fixed inputs. open_clip needs torchvision, which does not import beside the main CPU torch build, so
the comparison here is with those stored outputs; `test_live_open_clip` reruns open_clip when it imports.

fp32, worst |Δ| printed: pooled and tokens ≤ 1e-4, probabilities ≤ 1e-5, ids identical, pixels ≤ 1e-5.
"""

from __future__ import annotations

import json
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


# -- open_clip CLIP (native VisionTransformer + TextTransformer, SimpleTokenizer) -> the transformers CLIP format ------
# Fixtures written by tests/reference/make_open_clip_clip_fixtures.py: open_clip-clip (exact GELU, as ViT-B-32.json /
# the laion2b weights) and open_clip-clip-quickgelu (as ViT-B-32-quickgelu.json / OpenAI's weights); tiny OpenAI BPE
# (the first 1000 merges), text length 24.

CLIP_NAMES = ["open_clip-clip", "open_clip-clip-quickgelu"]
CLIP_TEXTS = ["a photo of a cat", "A DOG, running!", "", "ünïcödé café 東京", "word " * 30, "x", "snake_case &amp; more",
              "it's  a\ttab\nnewline", "don't stop, we'll see", "123 4567 89", "<end_of_text> inside",
              "Zürich; São Paulo"]  # = make_open_clip_clip_fixtures.py TEXTS


def _check_clip(model, ref, name):
    from siglite.preprocess.image import preprocess_batch

    ids, mask = model.tokenize(CLIP_TEXTS)
    assert mask is None  # open_clip's SimpleTokenizer returns ids only; the text tower is causal
    np.testing.assert_array_equal(ids, ref["input_ids"])
    pooled, tokens = model.engine.encode_image(ref["pixels"], tokens=True)
    _worst(f"{name} encode_image", pooled, ref["image_pooled"])
    _worst(f"{name} vision tokens (before ln_post)", tokens, ref["image_tokens"])
    text = model.text_features(CLIP_TEXTS)
    _worst(f"{name} encode_text", text, ref["text_pooled"])
    _worst(f"{name} softmax probabilities", model.scores(model.logits(pooled, text)), ref["probs"], ATOL_PROBS)
    pixels, _, _ = preprocess_batch([ref["image_uint8"]], model.image_config, "resize")
    _worst(f"{name} preprocessing (shortest side + centre crop)", pixels[0], ref["image_preprocessed"], 1e-5)


@pytest.mark.parametrize("name", CLIP_NAMES)
def test_open_clip_clip_fixture_parity(name):
    folder = FIXTURES / name
    model = siglite.load(folder, engine="torch", device="cpu")
    assert model.config["model_type"] == "clip" and model.logit_kind == "softmax"
    assert model.config["vision_config"]["hidden_act"] == ("quick_gelu" if name.endswith("quickgelu") else "gelu")
    ref = np.load(folder / "reference.npz")
    assert (ref["input_ids"][:, -1] != 0).any(), "the fixture should truncate one text"
    _check_clip(model, ref, name)


def test_clip_quick_gelu_follows_the_config(tmp_path):
    """Dropping `quick_gelu` from the config (-> nn.GELU) moves the outputs measurably away from open_clip's."""
    folder = tmp_path / "no-quickgelu"
    shutil.copytree(FIXTURES / "open_clip-clip-quickgelu", folder)
    cfg = json.loads((folder / oc.OPEN_CLIP_CONFIG).read_text())
    del cfg["model_cfg"]["quick_gelu"]
    (folder / oc.OPEN_CLIP_CONFIG).write_text(json.dumps(cfg))
    ref = np.load(folder / "reference.npz")
    right = siglite.load(FIXTURES / "open_clip-clip-quickgelu", engine="torch", device="cpu")
    wrong = siglite.load(folder, engine="torch", device="cpu")
    d_right = float(np.abs(right.engine.encode_image(ref["pixels"])[0] - ref["image_pooled"]).max())
    d_wrong = float(np.abs(wrong.engine.encode_image(ref["pixels"])[0] - ref["image_pooled"]).max())
    print(f"encode_image vs open_clip: quick_gelu {d_right:.2e}, exact GELU {d_wrong:.2e}")
    assert d_wrong > 100 * max(d_right, 1e-7)


def test_clip_tokenizer_from_vocab_and_merges(tmp_path):
    """The other file layout of the same BPE (vocab.json + merges.txt, as transformers 4 saves CLIPTokenizer) gives
    the same ids; no BPE files at all is a one-line error naming what to add."""
    folder = tmp_path / "vocab-merges"
    shutil.copytree(FIXTURES / "open_clip-clip", folder)
    model = json.loads((folder / "tokenizer.json").read_text())["model"]
    (folder / "tokenizer.json").unlink()
    (folder / "vocab.json").write_text(json.dumps(model["vocab"]))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    ref = np.load(folder / "reference.npz")
    np.testing.assert_array_equal(siglite.load(folder).tokenize(CLIP_TEXTS)[0], ref["input_ids"])
    (folder / "merges.txt").unlink()
    with pytest.raises(LoadError, match=r"no CLIP BPE files .* \(tokenizer\.json, or vocab\.json \+ merges\.txt"):
        siglite.load(folder)


def test_clip_tokenizer_vocabulary_is_checked(tmp_path):
    """A vocabulary that is not the one SimpleTokenizer builds from the merges (ids shifted) is refused."""
    folder = tmp_path / "shifted"
    shutil.copytree(FIXTURES / "open_clip-clip", folder)
    data = json.loads((folder / "tokenizer.json").read_text())
    data["model"]["vocab"] = {k: (v + 1) % len(data["model"]["vocab"]) for k, v in data["model"]["vocab"].items()}
    (folder / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(LoadError, match="is not the one open_clip builds from their merges"):
        siglite.load(folder)


def test_clip_weight_and_config_errors_name_the_key(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "bad"
    shutil.copytree(FIXTURES / "open_clip-clip", folder)
    path = folder / "open_clip_model.safetensors"
    good = load_file(path)
    save_file({**good, "visual.proj": torch.zeros(24, 32)}, path)  # transposed
    with pytest.raises(LoadError, match=r"visual\.proj has shape \(24, 32\), open_clip_config\.json implies "
                                        r"\(32, 24\)"):
        siglite.load(folder)
    save_file({k: v for k, v in good.items() if k != "visual.class_embedding"}, path)
    with pytest.raises(LoadError, match=r"missing weight visual\.class_embedding"):
        siglite.load(folder)
    save_file({**good, "visual.extra": torch.zeros(3)}, path)
    with pytest.raises(LoadError, match=r"unused weight.*visual\.extra"):
        siglite.load(folder)
    save_file(good, path)
    cfg = json.loads((folder / oc.OPEN_CLIP_CONFIG).read_text())
    for where, key, value in [("vision_cfg", "pool_type", "avg"), ("text_cfg", "no_causal_mask", True),
                              ("vision_cfg", "layers", [3, 4, 6, 3])]:
        bad = json.loads(json.dumps(cfg))
        bad["model_cfg"][where][key] = value
        (folder / oc.OPEN_CLIP_CONFIG).write_text(json.dumps(bad))
        with pytest.raises(LoadError, match=rf"{where}\.{key}"):
            siglite.load(folder)


@pytest.mark.parametrize("name", CLIP_NAMES)
def test_live_open_clip_clip(name, tmp_path):
    """Rerun open_clip on the CLIP fixture folders when it imports: `create_model_from_pretrained("local-dir:...")`,
    `encode_image/text`, and open_clip's own SimpleTokenizer over the folder's merges (its `get_tokenizer` would use
    the full bundled BPE, which the tiny vocabulary is a prefix of)."""
    try:
        import open_clip
        from open_clip.tokenizer import SimpleTokenizer
    except Exception as e:  # ImportError, or torchvision's RuntimeError against a mismatched torch
        pytest.skip(f"open_clip does not import here ({type(e).__name__}: {str(e).splitlines()[0][:80]}); "
                    "test_open_clip_clip_fixture_parity checks the outputs open_clip stored")
    import gzip

    folder = FIXTURES / name
    merges = json.loads((folder / "tokenizer.json").read_text())["model"]["merges"]
    with gzip.open(tmp_path / "bpe.txt.gz", "wt", encoding="utf-8") as f:  # open_clip's format: a header line first
        f.write("\n".join(["#version: 0.2"] + [m if isinstance(m, str) else " ".join(m) for m in merges]))
    ids = SimpleTokenizer(bpe_path=str(tmp_path / "bpe.txt.gz"), context_length=24)(CLIP_TEXTS)
    ref_model, _ = open_clip.create_model_from_pretrained(f"local-dir:{folder}")
    ref_model.eval()
    pixels = torch.from_numpy(np.load(folder / "reference.npz")["pixels"])
    with torch.no_grad():
        img, txt = ref_model.encode_image(pixels).numpy(), ref_model.encode_text(ids).numpy()
    model = siglite.load(folder, engine="torch", device="cpu")
    np.testing.assert_array_equal(model.tokenize(CLIP_TEXTS)[0], ids.numpy())
    _worst(f"{name} live open_clip {open_clip.__version__} encode_image", model.engine.encode_image(pixels.numpy())[0],
           img)
    _worst(f"{name} live open_clip encode_text", model.text_features(CLIP_TEXTS), txt)


def test_live_simple_tokenizer_full_bpe(tmp_path):
    """When open_clip imports: siglite's SimpleTokenizer over open_clip's full bundled BPE (written out as vocab.json +
    merges.txt, as the hub's CLIP repos carry it) gives open_clip's ids at length 77 on a varied text set."""
    try:
        from open_clip.tokenizer import SimpleTokenizer as Reference
        from open_clip.tokenizer import default_bpe
    except Exception as e:  # ImportError, or torchvision's RuntimeError against a mismatched torch
        pytest.skip(f"open_clip does not import here ({type(e).__name__}: {str(e).splitlines()[0][:80]})")
    import gzip

    from siglite.preprocess.open_clip_text import HF_SPECIALS, OPEN_CLIP_SPECIALS, SimpleTokenizer

    ref = Reference()
    names = dict(zip(OPEN_CLIP_SPECIALS, HF_SPECIALS))
    (tmp_path / "vocab.json").write_text(json.dumps({names.get(k, k): v for k, v in ref.encoder.items()}))
    with gzip.open(default_bpe(), "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1:49152 - 256 - 2 + 1]
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    texts = CLIP_TEXTS + ["ünïcödé café 東京 🐱", "word " * 100, "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ", "emoji 👍🏽 flags 🇫🇷",
                          "HTML &amp; entities <b>bold</b>", "tabs\t\tand\u00a0nbsp", "crème brûlée — naïve façade",
                          "<START_OF_TEXT>upper special", "it’s curly", "a photo of a {}.".format("golden retriever")]
    ours = SimpleTokenizer(tmp_path, 77)
    np.testing.assert_array_equal(ours(texts)[0], ref(texts).numpy())
    print(f"{len(texts)} texts: ids identical to open_clip's SimpleTokenizer (vocab {len(ref.encoder)})")


@pytest.mark.slow  # ~17 s on 2 cores (two graph exports)
def test_clip_onnx_export_serves_open_clip_numbers(tmp_path):
    """An ONNX export of an open_clip CLIP folder carries open_clip_config.json and the BPE files, so it loads with the
    same SimpleTokenizer and serves open_clip's numbers (fp32 graph: ≤ 1e-4)."""
    pytest.importorskip("onnxruntime")
    from siglite.export import export

    export(FIXTURES / "open_clip-clip", tmp_path / "onnx", "onnx")
    ref = np.load(FIXTURES / "open_clip-clip" / "reference.npz")
    model = siglite.load(tmp_path / "onnx")
    assert model.tokenizer.kind == "open_clip_bpe"
    _check_clip(model, ref, "open_clip-clip onnx")
