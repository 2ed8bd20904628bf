"""CLIP: golden parity with transformers' CLIPModel / CLIPVisionModelWithProjection / CLIPVisionModel /
CLIPTextModelWithProjection + CLIPImageProcessor (PIL) + CLIPTokenizer, on tiny random checkpoints built in
clip_fixtures.py with transformers' own save functions.

fp32 tolerances (stated, and the worst difference printed): embeddings and last_hidden_state |Δ| ≤ 1e-4,
softmax probabilities |Δ| ≤ 1e-5, token ids and pixels identical.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from clip_fixtures import EOS, clip_bpe, make_clip_checkpoint, make_clip_tokenizer
from PIL import Image

import siglite
from siglite.errors import LoadError

ATOL_FEATURES = 1e-4
ATOL_PROBS = 1e-5
TEXTS = ["a photo of a cat", "A DOG, running!", "", "ünïcödé café 東京 🐱", "word " * 40, "x",
         "it's  a\ttab\nnewline", "<|endoftext|> inside", "don't stop, we'll see", "123 4567 89",
         "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ", "e\u0301 combining accent", "  leading and trailing  ", "emoji 👍🏽 flags 🇫🇷",
         "a" * 300, "HTML &amp; entities <b>bold</b>", "tabs\t\tand\u00a0nbsp", "Zürich; São Paulo — crème brûlée"]
REF_TF4 = "/work/refenv-tf4/bin/python"


def _maxdiff(name, ours, ref, atol):
    ref = ref.detach().float().numpy() if isinstance(ref, torch.Tensor) else ref
    assert ours.shape == ref.shape, f"{name}: shape {ours.shape} != reference {ref.shape}"
    diff = float(np.abs(ours - ref).max())
    print(f"{name}: worst |Δ| = {diff:.2e} (atol {atol:.0e})")
    assert diff <= atol, f"{name}: worst |Δ| {diff:.3e} > {atol:.0e}"
    return diff


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """CLIPModel, first-EOS pooling (eos_token_id = the EOS id), 32 px / patch 8 (16 patches + class token)."""
    return make_clip_checkpoint(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def reference(clip_folder):
    from transformers import AutoTokenizer, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    model = CLIPModel.from_pretrained(clip_folder, attn_implementation="sdpa").eval()
    return model, CLIPImageProcessorPil.from_pretrained(clip_folder), AutoTokenizer.from_pretrained(clip_folder)


def _pixels(processor, images):
    return processor(images=[Image.open(p) for p in images], return_tensors="pt")["pixel_values"]


# -- model parity -----------------------------------------------------------------------------------------------------


def test_image_parity(clip_folder, reference, sample_images):
    ref_model, processor, _ = reference
    model = siglite.load(clip_folder)
    pixels = _pixels(processor, sample_images)
    with torch.no_grad():
        want = ref_model.get_image_features(pixel_values=pixels)
        want = want.pooler_output if hasattr(want, "pooler_output") else want
        hidden = ref_model.vision_model(pixel_values=pixels).last_hidden_state
    _maxdiff("clip image_features (get_image_features)", model.image_features(sample_images, batch_size=3), want,
             ATOL_FEATURES)
    tokens = model.image_features(sample_images, tokens=True)
    assert tokens.shape[1] == (32 // 8) ** 2 + 1  # patches + class token
    _maxdiff("clip tokens (vision last_hidden_state)", tokens, hidden, ATOL_FEATURES)


def test_text_parity(clip_folder, reference):
    ref_model, _, tokenizer = reference
    from siglite.preprocess.open_clip_text import basic_clean

    model = siglite.load(clip_folder)
    # transformers 5's CLIPTokenizer no longer applies OpenAI CLIP's cleaning (ftfy, html.unescape); siglite does
    inputs = tokenizer([basic_clean(t) for t in TEXTS], padding="max_length", max_length=77, truncation=True,
                       return_tensors="pt")
    ids, mask = model.tokenize(TEXTS)
    np.testing.assert_array_equal(ids, inputs["input_ids"].numpy())
    np.testing.assert_array_equal(mask, inputs["attention_mask"].numpy())
    with torch.no_grad():
        want = ref_model.get_text_features(**inputs)
        want = want.pooler_output if hasattr(want, "pooler_output") else want
    _maxdiff("clip text_features (get_text_features)", model.text_features(TEXTS, batch_size=5), want, ATOL_FEATURES)


def test_classify_is_softmax_parity(clip_folder, reference, sample_images):
    """classify = softmax over the labels (CLIP's scores compete), equal to logits_per_image.softmax(dim=1)."""
    ref_model, processor, tokenizer = reference
    model = siglite.load(clip_folder)
    assert model.logit_kind == "softmax" and model.describe()["logits"] == "softmax"
    labels = ["cat", "dog", "red car", "gradient"]
    prompts = [f"This is a photo of {label}." for label in labels]
    text_in = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        ref = ref_model(pixel_values=_pixels(processor, sample_images), **text_in).logits_per_image.softmax(dim=1)
    probs = model.classify(sample_images, labels)
    _maxdiff("clip softmax probabilities", probs, ref, ATOL_PROBS)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)


@pytest.mark.parametrize("eos_rule", ["argmax", "first"])
def test_eos_pooling_rules(tmp_path, eos_rule):
    """Both of CLIPTextTransformer's pooling rules: argmax(ids) for eos_token_id == 2 (configs saved before
    transformers PR #24773), else the first eos_token_id. Raw ids where the two rules pick different positions."""
    from transformers import CLIPTextModelWithProjection

    folder = make_clip_checkpoint(tmp_path / eos_rule, eos_rule=eos_rule, seed=3)
    ref = CLIPTextModelWithProjection.from_pretrained(folder).eval()
    model = siglite.load(folder)
    eos = clip_bpe()[0][EOS] if eos_rule == "first" else 2
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 400, size=(4, 77))
    ids[:, 0] = clip_bpe()[0]["<|startoftext|>"]  # highest id at 0: argmax and first-EOS disagree
    for row, pos in enumerate([5, 20, 40, 76]):
        ids[row, pos] = eos
        ids[row, pos + 1:] = eos  # padded with the EOS, as openai's tokenizer pads
    mask = (np.arange(77)[None] <= np.array([5, 20, 40, 76])[:, None]).astype(np.int64)
    with torch.no_grad():
        want = ref(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).text_embeds
    _maxdiff(f"clip text_embeds, {eos_rule} EOS rule", model.engine.encode_text(ids, mask), want, ATOL_FEATURES)


def test_vision_with_projection_folder(clip_folder, tmp_path, sample_images):
    """CLIPVisionModelWithProjection (vision_model.* + visual_projection): image_embeds and last_hidden_state."""
    from transformers import CLIPVisionModelWithProjection

    ref = CLIPVisionModelWithProjection.from_pretrained(clip_folder).eval()
    folder = tmp_path / "vision-proj"
    ref.save_pretrained(folder)
    shutil.copy(clip_folder / "preprocessor_config.json", folder)
    model = siglite.load(folder)
    assert model.tokenizer is None
    pixels = torch.rand(2, 3, 32, 32) * 4 - 2
    with torch.no_grad():
        want = ref(pixel_values=pixels)
    pooled, tokens = model.engine.encode_image(pixels.numpy(), tokens=True)
    _maxdiff("clip vision-only image_embeds", pooled, want.image_embeds, ATOL_FEATURES)
    _maxdiff("clip vision-only last_hidden_state", tokens, want.last_hidden_state, ATOL_FEATURES)


def test_bare_vision_and_text_models(clip_folder, tmp_path):
    """CLIPVisionModel (no projection: pooler_output; keys with or without the vision_model. prefix) and
    CLIPTextModel (no projection: the EOS state)."""
    from transformers import CLIPTextModel, CLIPVisionModel

    vision = CLIPVisionModel.from_pretrained(clip_folder).eval()
    vision.save_pretrained(tmp_path / "v")
    shutil.copy(clip_folder / "preprocessor_config.json", tmp_path / "v")
    pixels = torch.rand(2, 3, 32, 32) * 4 - 2
    with torch.no_grad():
        want = vision(pixel_values=pixels)
    pooled, tokens = siglite.load(tmp_path / "v").engine.encode_image(pixels.numpy(), tokens=True)
    _maxdiff("clip CLIPVisionModel pooler_output", pooled, want.pooler_output, ATOL_FEATURES)
    _maxdiff("clip CLIPVisionModel last_hidden_state", tokens, want.last_hidden_state, ATOL_FEATURES)
    # the class's keys with and without the vision_model. prefix (transformers versions differ) load the same
    from safetensors.torch import load_file, save_file

    bare = {k.removeprefix("vision_model."): v for k, v in load_file(tmp_path / "v" / "model.safetensors").items()}
    for layout, weights in [("bare", bare), ("prefixed", {f"vision_model.{k}": v for k, v in bare.items()})]:
        shutil.copytree(tmp_path / "v", tmp_path / layout)
        save_file(weights, tmp_path / layout / "model.safetensors")
        got = siglite.load(tmp_path / layout).engine.encode_image(pixels.numpy())[0]
        np.testing.assert_array_equal(got, pooled, err_msg=layout)

    text = CLIPTextModel.from_pretrained(clip_folder).eval()
    text.save_pretrained(tmp_path / "t")
    make_clip_tokenizer(tmp_path / "t")
    model = siglite.load(tmp_path / "t")
    ids, mask = model.tokenize(TEXTS[:4])
    with torch.no_grad():
        want = text(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).pooler_output
    _maxdiff("clip CLIPTextModel pooler_output", model.text_features(TEXTS[:4]), want, ATOL_FEATURES)


def test_processor_config_folder(clip_folder, tmp_path, sample_images):
    """transformers 5's CLIPProcessor.save_pretrained writes processor_config.json (no preprocessor_config.json)."""
    from transformers import CLIPProcessor, CLIPTokenizer
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    folder = tmp_path / "proc"
    shutil.copytree(clip_folder, folder)
    (folder / "preprocessor_config.json").unlink()
    CLIPProcessor(image_processor=CLIPImageProcessorPil.from_pretrained(clip_folder),
                  tokenizer=CLIPTokenizer.from_pretrained(clip_folder)).save_pretrained(folder)
    assert (folder / "processor_config.json").is_file() and not (folder / "preprocessor_config.json").exists()
    np.testing.assert_array_equal(siglite.load(folder).image_features(sample_images),
                                  siglite.load(clip_folder).image_features(sample_images))


def test_save_round_trip_loads_in_transformers(clip_folder, tmp_path, sample_images):
    """Our model saved by siglite.checkpoints.save_checkpoint (the CLIP key map's other direction) loads in
    transformers' CLIPModel strictly and gives the same embeddings."""
    from transformers import CLIPModel

    from siglite.checkpoints import load_model, save_checkpoint

    _, ours = load_model(clip_folder)
    out = save_checkpoint(ours, tmp_path / "saved", image_config=json.loads(
        (clip_folder / "preprocessor_config.json").read_text()))
    ref, info = CLIPModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        want = ref.eval().get_image_features(pixel_values=pixels)
        want = want.pooler_output if hasattr(want, "pooler_output") else want
        got = ours.vision(pixels)[1]
    _maxdiff("clip saved -> transformers image_features", got.numpy(), want, 1e-5)


def test_strict_loading_names_weights(clip_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "broken"
    shutil.copytree(clip_folder, folder)
    weights = load_file(folder / "model.safetensors")
    weights.pop("visual_projection.weight")
    weights["text_model.extra.weight"] = torch.zeros(2)
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(LoadError, match=r"unused weight.*text_model\.extra\.weight"):
        siglite.load(folder)
    weights.pop("text_model.extra.weight")
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(LoadError, match=r"missing weight.*vision\.proj\.weight"):
        siglite.load(folder)


# -- preprocessing ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shortest,crop", [(32, 32), (40, 32), (24, 32)])
def test_image_preprocessing_equals_clip_processor(sample_images, shortest, crop):
    """Shortest-edge resize + centre crop (+ zero padding when the crop exceeds the image), CLIP mean/std: pixels equal
    to CLIPImageProcessorPil's, on images of several sizes and aspect ratios."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from siglite.preprocess.image import ImageConfig, decode, resize

    processor = CLIPImageProcessorPil(size={"shortest_edge": shortest}, crop_size={"height": crop, "width": crop})
    cfg = ImageConfig.from_hf(processor.to_dict())
    assert (cfg.shortest_edge, cfg.height, cfg.width, cfg.do_center_crop) == (shortest, crop, crop, True)
    for path in sample_images:
        ref = processor(images=[Image.open(path)], return_tensors="np")["pixel_values"][0]
        ours = resize(decode(path), cfg)
        assert ours.shape == ref.shape, path.name
        np.testing.assert_array_equal(ours, ref, err_msg=path.name)


def test_openai_style_int_sizes():
    """openai's preprocessor_config.json: bare ints, "size": 224 = shortest edge, "crop_size": 224."""
    from siglite.preprocess.image import ImageConfig

    cfg = ImageConfig.from_hf({"crop_size": 224, "do_center_crop": True, "size": 224, "resample": 3,
                               "feature_extractor_type": "CLIPFeatureExtractor"})
    assert (cfg.shortest_edge, cfg.height, cfg.width, cfg.do_center_crop) == (224, 224, 224, True)


# -- tokenizer --------------------------------------------------------------------------------------------------------


# Texts where OpenAI CLIP's cleaning (ftfy.fix_text, html.unescape) changes what is tokenized: mojibake, entities,
# curly quotes (full-width letters and "&amp;" beside a tag are in TEXTS too).
FTFY_TEXTS = ["cafÃ© crÃ¨me", "fish &amp; chips", "don’t “quote”", "&lt;3 you", "a &amp;amp; b"]


def _rows_changed_by_cleaning(texts):
    from siglite.preprocess.open_clip_text import basic_clean

    return [i for i, t in enumerate(texts) if basic_clean(t) != t.strip()]


@pytest.mark.parametrize("layout", ["hub", "vocab"])
def test_tokenizer_ids_equal_transformers(tmp_path, layout):
    """ids and mask identical to transformers 5's CLIPTokenizer, CLIPTokenizerFast and AutoTokenizer given the text
    after OpenAI CLIP's cleaning (which transformers 5 no longer applies), from tokenizer.json (what save_pretrained
    writes) and from OpenAI's vocab.json + merges.txt; on raw text they agree wherever ftfy changes nothing."""
    import transformers

    from siglite.preprocess.open_clip_text import basic_clean

    from siglite.preprocess.text import load_tokenizer

    texts = TEXTS + FTFY_TEXTS
    folder = make_clip_tokenizer(tmp_path / layout, layout)
    ours = load_tokenizer(folder, 77)
    ids, mask = ours(texts)
    assert ids.shape == (len(texts), 77) and ids.dtype == np.int64
    changed = _rows_changed_by_cleaning(texts)
    same = [i for i in range(len(texts)) if i not in changed]
    assert len(changed) >= len(FTFY_TEXTS) + 2  # the cases above, full width and "&amp;" beside a tag
    for cls in (transformers.CLIPTokenizer, transformers.CLIPTokenizerFast, transformers.AutoTokenizer):
        tok = cls.from_pretrained(folder)
        kw = dict(padding="max_length", max_length=77, truncation=True, return_tensors="np")
        ref = tok([basic_clean(t) for t in texts], **kw)
        np.testing.assert_array_equal(ids, ref["input_ids"], err_msg=cls.__name__)
        np.testing.assert_array_equal(mask, ref["attention_mask"], err_msg=cls.__name__)
        raw = tok(texts, **kw)["input_ids"]
        np.testing.assert_array_equal(ids[same], raw[same], err_msg=cls.__name__)
        fixed = range(len(TEXTS), len(texts))  # mojibake, entities, quotes: the cleaning did apply
        assert all((ids[i] != raw[i]).any() for i in fixed), cls.__name__
    vocab = clip_bpe()[0]
    assert ids[2, :2].tolist() == [vocab["<|startoftext|>"], vocab[EOS]] and mask[2].sum() == 2  # empty string
    assert mask[14].sum() == 77 and ids[14, -1] == vocab[EOS]  # long text truncated, EOS kept
    s = ours.settings()
    assert (s["lowercase"], s["add_bos"], s["add_eos"], s["padding_side"]) == (True, True, True, "right")
    assert s["clean"] == "ftfy+html"


@pytest.mark.skipif(not os.path.exists(REF_TF4), reason=f"{REF_TF4} (transformers 4.x venv) is not on this machine")
def test_tokenizer_ids_equal_transformers4(tmp_path):
    """transformers 4.57's pure-Python CLIPTokenizer cleans with ftfy when it is installed (siglite depends on ftfy,
    and the venv sees it): the same ids on every text, mojibake and HTML entities included, except where a literal
    "<" stops ftfy from decoding entities (OpenAI CLIP's html.unescape, which siglite follows, decodes them anyway).
    Its CLIPTokenizerFast never cleans: the same ids where the cleaning changes nothing."""
    from siglite.preprocess.text import load_tokenizer

    texts = TEXTS + FTFY_TEXTS
    folder = make_clip_tokenizer(tmp_path / "v", "vocab")
    ids, _ = load_tokenizer(folder, 77)(texts)
    script = ("import json, sys\nimport ftfy\nfrom transformers import CLIPTokenizer, CLIPTokenizerFast\n"
              "texts = json.loads(sys.stdin.read())\nslow = CLIPTokenizer.from_pretrained(sys.argv[1])\n"
              "assert slow.fix_text is not None, 'ftfy not used'\n"
              "print(json.dumps({c.__name__: c.from_pretrained(sys.argv[1])(texts, padding='max_length', max_length=77,"
              " truncation=True)['input_ids'] for c in (CLIPTokenizer, CLIPTokenizerFast)}))\n")
    run = subprocess.run([REF_TF4, "-c", script, str(folder)], input=json.dumps(texts), capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""})
    if run.returncode != 0 and "No module named 'ftfy'" in run.stderr:
        pytest.skip(f"{REF_TF4} has no ftfy: its CLIPTokenizer would not clean (pip install ftfy there)")
    assert run.returncode == 0, run.stderr[-2000:]
    ref = json.loads(run.stdout.strip().splitlines()[-1])
    tagged = [i for i, t in enumerate(texts) if "<" in t and "&" in t]
    slow_rows = [i for i in range(len(texts)) if i not in tagged]
    np.testing.assert_array_equal(ids[slow_rows], np.array(ref["CLIPTokenizer"])[slow_rows])
    assert any(i in slow_rows for i in _rows_changed_by_cleaning(texts))
    same = [i for i in range(len(texts)) if i not in _rows_changed_by_cleaning(texts)]
    np.testing.assert_array_equal(ids[same], np.array(ref["CLIPTokenizerFast"])[same])


# -- registry ---------------------------------------------------------------------------------------------------------


def test_clip_specs_listed_and_buildable(tmp_path):
    """The CLIP architectures are data (specs/*.json): listed, and a random model at a spec's family saves as a
    transformers CLIPModel at that shape."""
    from transformers import CLIPConfig

    from siglite.checkpoints import random_model, save_checkpoint
    from siglite.registry import get_spec

    names = {s.name: s for s in siglite.list_models()}
    for name in ["clip-vit-base-patch32", "clip-vit-base-patch16", "clip-vit-large-patch14",
                 "clip-vit-large-patch14-336", "clip-vit-base-patch32-laion2b"]:
        assert names[name].family == "clip"
    spec = get_spec("openai/clip-vit-base-patch32")
    cfg = CLIPConfig(**{k: v for k, v in spec.hf_config().items() if k not in ("model_type", "architectures")})
    assert (cfg.projection_dim, cfg.vision_config.patch_size, cfg.text_config.hidden_size) == (512, 32, 512)
    assert spec.vision_config.num_tokens == 50 and spec.vision_config.pooled_size == 512
    assert get_spec("clip-vit-large-patch14-336").hf_preprocessor_config()["crop_size"] == {"height": 336, "width": 336}
    model = random_model(spec, vision_layers=1, text_layers=1)
    assert model.logit_kind == "softmax" and model.vision.proj.weight.shape == (512, 768)
    folder = save_checkpoint(model, tmp_path / "b32", spec)
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["CLIPModel"] and config["projection_dim"] == 512
    assert "class_token" not in config["vision_config"]  # architecture fields stay out of config.json


def test_cli_list_shows_clip():
    run = subprocess.run([sys.executable, "-m", "siglite.cli.main", "list", "--format", "json"], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    rows = {r["name"]: r for r in json.loads(run.stdout)}
    assert rows["clip-vit-base-patch32"]["family"] == "clip" and rows["clip-vit-base-patch32"]["tokens"] == 50


# -- tasks: zero-shot eval (seed 002's CIFAR-100 workflow) and export -------------------------------------------------


def test_eval_zeroshot_cifar_format_on_clip(clip_folder, reference, tmp_path, capsys):
    """`siglite eval zeroshot` on a CLIP checkpoint and a CIFAR-100 python-pickle folder: top-1 / per-class recall
    equal to ranking transformers' CLIPModel logits_per_image with the same template."""
    import pickle

    from siglite.cli.main import main

    names = ["apple", "bus", "cloud", "fox", "rose", "tulip"]
    rng = np.random.default_rng(1)
    rows = rng.integers(0, 255, (24, 3072), dtype=np.uint8)
    labels = [i % len(names) for i in range(24)]
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    (root / "test").write_bytes(pickle.dumps({b"data": rows, b"fine_labels": labels}))
    (root / "meta").write_bytes(pickle.dumps({b"fine_label_names": [n.encode() for n in names]}))
    assert main(["eval", "zeroshot", "--model", str(clip_folder), "--data", str(root), "--format", "json"]) == 0
    record = json.loads(capsys.readouterr().out)

    ref_model, processor, tokenizer = reference
    images = [Image.fromarray(r.reshape(3, 32, 32).transpose(1, 2, 0)) for r in rows]
    text_in = tokenizer([f"This is a photo of {n}." for n in names], padding="max_length", max_length=77,
                        truncation=True, return_tensors="pt")
    with torch.no_grad():
        pred = ref_model(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"],
                         **text_in).logits_per_image.argmax(1).numpy()
    labels = np.array(labels)
    acc1 = float((pred == labels).mean())
    recall = float(np.mean([(pred[labels == c] == c).mean() for c in range(len(names))]))
    print(f"clip zero-shot on random weights: siglite acc1 {record['acc1']:.4f}, transformers {acc1:.4f}")
    assert record["n"] == 24 and record["acc1"] == pytest.approx(acc1) and \
        record["mean_per_class_recall"] == pytest.approx(recall)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_export_clip(clip_folder, tmp_path, sample_images, fmt):
    """`siglite export` of a CLIP model: the graphs serve the same embeddings and softmax probabilities (≤ 1e-4)."""
    pytest.importorskip("onnxruntime" if fmt == "onnx" else "openvino", reason=f"the {fmt} extra is not installed")
    from siglite.export import export

    sidecar = export(clip_folder, tmp_path / fmt, fmt)
    assert sidecar.logits == "softmax" and sidecar.dims["vision_tokens"] == 17
    graph, ref = siglite.load(tmp_path / fmt), siglite.load(clip_folder)
    assert graph.logit_kind == "softmax"
    _maxdiff(f"clip {fmt} image_features", graph.image_features(sample_images), ref.image_features(sample_images),
             ATOL_FEATURES)
    _maxdiff(f"clip {fmt} tokens", graph.image_features(sample_images, tokens=True),
             ref.image_features(sample_images, tokens=True), ATOL_FEATURES)
    _maxdiff(f"clip {fmt} text_features", graph.text_features(TEXTS), ref.text_features(TEXTS), ATOL_FEATURES)
    _maxdiff(f"clip {fmt} probabilities", graph.classify(sample_images, ["cat", "dog"]),
             ref.classify(sample_images, ["cat", "dog"]), ATOL_PROBS)


@pytest.mark.parametrize("precision,min_cos", [("float32", 1.0 - 1e-6), ("float16", 0.9999), ("bfloat16", 0.999)])
def test_cuda_engine_runs_clip(clip_folder, sample_images, precision, min_cos):
    """The cuda engine's mixed-precision conversion (CPU-emulated here) on CLIP: class token, pre-norm (which writes
    the residual stream), quick_gelu (not fused as tanh-GELU), bias-free projections."""
    ref = siglite.load(clip_folder)
    model = siglite.load(clip_folder, engine="cuda", device="cpu", dtype=precision)
    for name, a, b in [("image", model.image_features(sample_images), ref.image_features(sample_images)),
                       ("text", model.text_features(TEXTS), ref.text_features(TEXTS))]:
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        print(f"clip cuda engine {precision} {name}: cosine min {cos.min():.6f}")
        assert cos.min() >= min_cos


@pytest.mark.slow
def test_int8_quantize_clip(clip_folder, tmp_path, sample_images):
    """INT8 PTQ of a CLIP model (both towers, the bias-free projections included): the seed's fidelity bar on tokens
    (cosine mean ≥ 0.995, 1%-low ≥ 0.99) on held-out images, and the graphs serve the softmax model."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from siglite.tasks.quantize import quantize

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40 + i, 36, 3), dtype=np.uint8) for i in range(24)]
    report = quantize(clip_folder, images, tmp_path / "int8", num_calib=16, num_check=8, sensitivity_samples=2)
    runtime = report["fidelity"]["runtime"]
    print(f"clip INT8 runtime fidelity: {runtime}")
    assert runtime["vision_hidden"]["mean"] >= 0.995 and runtime["vision_hidden"]["p1"] >= 0.99
    assert runtime["vision_pooled"]["mean"] >= 0.995 and runtime["text_pooled"]["mean"] >= 0.99
    model = siglite.load(tmp_path / "int8")
    assert model.logit_kind == "softmax"
    np.testing.assert_allclose(model.classify(sample_images, ["cat", "dog"]).sum(1), 1.0, atol=1e-5)
