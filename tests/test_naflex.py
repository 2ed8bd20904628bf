"""SigLIP 2 NaFlex: the image processor and the model against transformers' Siglip2ImageProcessorPil / Siglip2Model,
on images of several aspect ratios (tall, wide, square, tiny) and patch budgets. Worst |Δ| is printed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import siglite
from naflex_fixtures import ASPECTS, aspect_images, make_naflex_checkpoint
from siglite.errors import LoadError, SigliteError
from siglite.model import patch_mask, resize_pos_embed
from siglite.preprocess import naflex

ATOL = 1e-4  # fp32, as the issue asks
BUDGETS = [16, 64, 144]  # below, at and above the 8x8 position grid of the fixture (down- and upsampling)
TEXTS = ["a photo of a Cat", "Hello WORLD, ça va?", "x", "  spaces   and\ttabs ", "the same text " * 20]


def _maxdiff(name: str, ours, ref, atol: float) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, f"{name}: shape {ours.shape} vs reference {ref.shape}"
    worst = float(np.abs(ours - ref).max())
    print(f"{name}: worst |Δ| = {worst:.3g}")
    assert worst <= atol, f"{name}: worst |Δ| {worst:.3g} > {atol}"
    return worst


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Patch 4, an 8x8 position grid (num_patches 64), processor budget 64; transformers 5 processor layout."""
    return make_naflex_checkpoint(tmp_path_factory.mktemp("naflex"))


@pytest.fixture(scope="module")
def reference(folder):
    from transformers import AutoProcessor, Siglip2Model

    return Siglip2Model.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)


@pytest.fixture(scope="module")
def model(folder):
    return siglite.load(folder, device="cpu")


@pytest.fixture(scope="module")
def images():
    return aspect_images()


# -- processor ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("patch_size,budget,resample", [(16, 256, 2), (16, 576, 2), (16, 1024, 2), (14, 784, 3),
                                                        (4, 64, 1), (4, 16, 0)])
def test_processor_identical(patch_size, budget, resample, images):
    from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil

    extra = [aspect_images(1)[2].resize((1000, 999)), aspect_images(2)[3].resize((16, 17))]
    ref = Siglip2ImageProcessorPil(patch_size=patch_size, max_num_patches=budget, resample=resample)(
        images=images + extra, return_tensors="np")
    cfg = naflex.NaflexConfig(patch_size=patch_size, max_num_patches=budget, resample=resample)
    batch, ok, failures = naflex.preprocess_batch(images + extra, cfg, pad_to=budget)
    assert ok == list(range(len(images) + 2)) and not failures
    np.testing.assert_array_equal(batch.patches, ref["pixel_values"])
    np.testing.assert_array_equal(batch.mask, ref["pixel_attention_mask"])
    np.testing.assert_array_equal(batch.spatial_shapes, ref["spatial_shapes"])
    assert all(r * c <= budget for r, c in batch.spatial_shapes)


def test_processor_pads_to_longest(images):
    cfg = naflex.NaflexConfig(patch_size=4, max_num_patches=64)
    batch, _, _ = naflex.preprocess_batch(images, cfg)
    assert batch.patches.shape == (len(images), max(batch.lengths), 48)
    assert batch.mask.sum(1).tolist() == batch.lengths
    assert not batch.patches[batch.mask == 0].any()


def test_target_size_keeps_aspect_and_budget():
    for h, w in ASPECTS + [(1, 5000), (5000, 1), (16, 16)]:
        for budget in (1, 16, 256, 1024):
            th, tw = naflex.target_size(h, w, 16, budget)
            assert th % 16 == 0 and tw % 16 == 0 and th >= 16 and tw >= 16
            assert (th // 16) * (tw // 16) <= max(budget, 1)


def test_config_from_processor_files(model, folder, tmp_path):
    cfg = model.image_config
    assert isinstance(cfg, naflex.NaflexConfig)
    assert (cfg.patch_size, cfg.max_num_patches, cfg.resample) == (4, 64, 2)
    assert naflex.NaflexConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    # the hub layout: a flat preprocessor_config.json
    flat = make_naflex_checkpoint(tmp_path / "flat", preprocessor_json=True, max_num_patches=144)
    assert naflex.load_image_config(flat).max_num_patches == 144


# -- model ----------------------------------------------------------------------------------------------------------


def test_resize_pos_embed_equals_interpolate():
    """The explicit filter weights equal F.interpolate(bilinear, antialias) per image, padding included."""
    torch.manual_seed(0)
    G, D = 8, 6
    pos = torch.randn(1, G * G, D)
    shapes = torch.tensor([[3, 21], [21, 3], [8, 8], [12, 12], [1, 1], [5, 9]])
    length = 150
    out = resize_pos_embed(pos, shapes, length)
    grid = pos[0].reshape(G, G, D).permute(2, 0, 1)[None]
    worst = 0.0
    for i, (r, c) in enumerate(shapes.tolist()):
        ref = F.interpolate(grid, size=(r, c), mode="bilinear", align_corners=False, antialias=True)
        ref = ref[0].reshape(D, r * c).T
        worst = max(worst, float((out[i, :r * c] - ref).abs().max()))
        torch.testing.assert_close(out[i, r * c:], out[i, :1].expand(length - r * c, D), atol=1e-6, rtol=0)
    print(f"resize_pos_embed vs F.interpolate antialias: worst |Δ| = {worst:.3g}")
    assert worst <= 1e-5
    assert patch_mask(shapes, length).sum(1).tolist() == shapes.prod(1).tolist()


@pytest.mark.parametrize("budget", BUDGETS)
def test_image_parity(budget, model, reference, images):
    ref_model, processor = reference
    # The image processor itself: Siglip2Processor.__call__ overrides patch_size/max_num_patches with its class
    # defaults (16/256) unless passed, which would not fit this tiny patch-4 model.
    inputs = processor.image_processor(images=images, max_num_patches=budget, return_tensors="pt")
    with torch.no_grad():
        ref = ref_model.get_image_features(**inputs)
    pooled = model.image_features(images, max_num_patches=budget)
    _maxdiff(f"budget {budget} pooler_output", pooled, ref.pooler_output, ATOL)
    tokens = model.image_features(images, max_num_patches=budget, tokens=True)
    assert isinstance(tokens, list) and len(tokens) == len(images)
    lengths = inputs["pixel_attention_mask"].sum(1).tolist()
    assert [t.shape for t in tokens] == [(n, 32) for n in lengths]
    _maxdiff(f"budget {budget} last_hidden_state", np.concatenate(tokens),
             torch.cat([ref.last_hidden_state[i, :n] for i, n in enumerate(lengths)]), ATOL)


def test_padding_does_not_change_results(model, images):
    """One image per batch (no padding) == one batch padded to its longest == padded far beyond (fixed budget)."""
    alone = model.image_features(images, batch_size=1, max_num_patches=144)
    batched = model.image_features(images, max_num_patches=144)
    _maxdiff("batched vs alone", batched, alone, 1e-5)
    batch, _, _ = naflex.preprocess_batch(images, model.image_config, max_num_patches=144, pad_to=300)
    pooled, hidden = model.engine.encode_image(batch.patches, tokens=True, spatial_shapes=batch.spatial_shapes)
    _maxdiff("padded to 300 vs alone", pooled, alone, 1e-5)
    toks_alone = model.image_features(images, batch_size=1, max_num_patches=144, tokens=True)
    _maxdiff("tokens padded vs alone", np.concatenate([h[:n] for h, n in zip(hidden, batch.lengths)]),
             np.concatenate(toks_alone), 1e-5)


def test_encode_images_skips_bad_inputs(model, images):
    out = model.encode_images([images[0], b"not an image", images[3]], tokens=True, batch_size=2)
    assert out.indices == [0, 2] and [i for i, _ in out.failures] == [1] and "bytes" in out.failures[0][1]
    assert out.features.shape == (2, 32) and [t.shape[0] for t in out.tokens] == [63, 63]
    _maxdiff("skip vs direct", out.features, model.image_features([images[0], images[3]]), 1e-5)


def test_text_parity(model, reference):
    ref_model, processor = reference
    inputs = processor(text=TEXTS, return_tensors="pt")  # Siglip2Tokenizer (lowercasing), padding to 64
    ids, mask = model.tokenize(TEXTS)
    np.testing.assert_array_equal(ids, inputs["input_ids"].numpy())
    with torch.no_grad():
        unmasked = ref_model.get_text_features(input_ids=inputs["input_ids"]).pooler_output
        masked = ref_model.get_text_features(**inputs).pooler_output
    # as trained (no padding mask) and transformers-5 style (the tokenizer's mask), at the engine
    _maxdiff("text pooler_output, no mask", model.engine.encode_text(ids, None), unmasked, ATOL)
    _maxdiff("text pooler_output, masked", model.engine.encode_text(ids, inputs["attention_mask"].numpy()), masked,
             ATOL)


def test_logits_parity(model, reference, images):
    ref_model, processor = reference
    image_inputs = processor.image_processor(images=images, return_tensors="pt")
    text_inputs = processor(text=TEXTS, return_tensors="pt")
    with torch.no_grad():
        ref = ref_model(input_ids=text_inputs["input_ids"], **image_inputs).logits_per_image
    ids, _ = model.tokenize(TEXTS)
    ours = model.logits(model.image_features(images), model.engine.encode_text(ids, None))
    _maxdiff("logits_per_image", ours, ref, ATOL)


def test_single_tower_checkpoints(reference, model, images, tmp_path):
    """transformers 5 saves Siglip2VisionModel / Siglip2TextModel weights without the tower prefix."""
    ref_model, _ = reference
    ref_model.vision_model.save_pretrained(tmp_path / "vision")
    ref_model.text_model.save_pretrained(tmp_path / "text")
    from siglite.checkpoints import load_model

    _, vision = load_model(tmp_path / "vision")
    _, text = load_model(tmp_path / "text")
    assert vision.text is None and text.vision is None
    batch, _, _ = naflex.preprocess_batch(images, model.image_config)
    x, shapes = torch.from_numpy(batch.patches), torch.from_numpy(batch.spatial_shapes)
    with torch.no_grad():
        expected = model.engine.model.vision(x, shapes)[1]
        _maxdiff("vision-only pooler_output", vision.vision(x, shapes)[1], expected, 1e-6)
        ids = torch.from_numpy(model.tokenize(TEXTS)[0])
        _maxdiff("text-only pooler_output", text.text(ids)[1], model.engine.model.text(ids)[1], 1e-6)


def test_errors(folder, model, images):
    with pytest.raises(SigliteError, match="NaFlex"):
        model.image_features(images, preprocess="letterbox")
    for bad_budget in (0, -3, 2.5):
        with pytest.raises(SigliteError, match="max_num_patches"):
            model.image_features(images, max_num_patches=bad_budget)
    with pytest.raises(ValueError, match="max_num_patches"):
        naflex.preprocess(np.zeros((8, 8, 3), np.uint8), model.image_config, max_num_patches=0)
    bad = json.loads((folder / "config.json").read_text())
    bad["vision_config"]["num_patches"] = 60
    from siglite.checkpoints import read_checkpoint

    broken = folder.parent / "broken"
    broken.mkdir(exist_ok=True)
    (broken / "config.json").write_text(json.dumps(bad))
    with pytest.raises(LoadError, match="num_patches 60"):
        read_checkpoint(broken)


def test_fixed_model_refuses_max_num_patches(tiny_gemma, sample_images):
    with pytest.raises(SigliteError, match="NaFlex"):
        siglite.load(tiny_gemma, device="cpu").image_features(sample_images[:1], max_num_patches=64)


def test_specs_listed():
    names = {s.name: s for s in siglite.list_models()}
    for name in ("siglip2-base-patch16-naflex", "siglip2-so400m-patch16-naflex"):
        spec = names[name]
        assert spec.vision_config.variable_resolution and spec.vision_config.num_patches == 256


# -- tasks: embed and eval on a NaFlex model ------------------------------------------------------------------------


def test_embed_folder(model, images, tmp_path):
    from test_embed import read_output

    from siglite.tasks.embed import embed

    src = tmp_path / "photos"
    src.mkdir()
    paths = []
    for i, img in enumerate(images):
        paths.append(src / f"{i}.png")
        img.save(paths[-1])
    (src / "broken.png").write_bytes(b"not a png")
    record = embed(model, src, tmp_path / "out", shard_size=3, batch_size=2, workers=1, progress=False)
    assert record["embedded"] == len(images) and record["errors"] == 1
    emb, meta, errors, manifest = read_output(tmp_path / "out")
    assert meta["source"] == [str(p) for p in paths] and len(errors) == 1
    assert [(w, h) for w, h in zip(meta["width"], meta["height"])] == [img.size for img in images]
    # different batching (padding) than image_features: equal up to float summation order
    _maxdiff("embed vs image_features", emb, model.image_features(paths), 1e-5)
    assert manifest["preprocess"]["image"]["max_num_patches"] == 64
    with pytest.raises(SigliteError, match="NaFlex"):
        embed(model, src, tmp_path / "out_tokens", tokens=True, progress=False)


def test_cli_eval_zeroshot(folder, tmp_path, capsys):
    from test_evaluate import _write_cifar

    from siglite.cli.main import main

    _write_cifar(tmp_path / "cifar", n=12)
    assert main(["eval", "zeroshot", "--model", str(folder), "--device", "cpu", "--data", str(tmp_path / "cifar"),
                 "--format", "json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["n"] == 12 and rec["n_failed"] == 0 and 0.0 <= rec["acc1"] <= rec["acc5"] <= 1.0


# -- export ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("fmt,runtime", [("onnx", "onnxruntime"), ("openvino", "openvino")])
def test_export_fixed_budget(fmt, runtime, folder, model, images, tmp_path):
    """ONNX / OpenVINO at a fixed patch budget (144, above the processor's 64): smaller budgets are padded to it."""
    pytest.importorskip(runtime, reason=f"the {runtime} engine is an optional extra")
    from siglite.export import export

    sidecar = export(folder, tmp_path / fmt, fmt, max_num_patches=144)
    assert sidecar.inputs["vision"] == ["pixel_values", "spatial_shapes"] and sidecar.dims["num_patches"] == 144
    assert sidecar.image["kind"] == "naflex"
    served = siglite.load(tmp_path / fmt, device="cpu")
    assert served.engine.name == runtime and served.engine.num_patches == 144
    for budget in (16, 144):
        _maxdiff(f"{fmt} budget {budget} pooler_output", served.image_features(images, max_num_patches=budget),
                 model.image_features(images, max_num_patches=budget), ATOL)
    tokens = served.image_features(images, tokens=True)  # default: the export's budget
    _maxdiff(f"{fmt} last_hidden_state", np.concatenate(tokens),
             np.concatenate(model.image_features(images, tokens=True, max_num_patches=144)), ATOL)
    _maxdiff(f"{fmt} text", served.text_features(TEXTS), model.text_features(TEXTS), ATOL)
    with pytest.raises(SigliteError, match="144"):
        served.image_features(images, max_num_patches=256)


def test_random_model_roundtrip_through_transformers(tmp_path, images):
    """checkpoints.random_model + save_checkpoint write transformers' Siglip2 layout for a NaFlex spec."""
    from transformers import Siglip2Model

    from siglite.registry import Spec
    from siglite.checkpoints import random_model, save_checkpoint

    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
    spec = Spec(name="tiny-naflex", hub_id="x/tiny-naflex",
                vision={**tower, "image_size": 24, "patch_size": 4}, family="siglip2-naflex",
                text={**tower, "vocab_size": 100, "max_position_embeddings": 8}, tokenizer="tokenizers",
                image={"patch_size": 4, "max_num_patches": 36, "resample": 2, "image_mean": [0.5] * 3,
                       "image_std": [0.5] * 3})
    ours = random_model(spec)
    folder = save_checkpoint(ours, tmp_path / "ckpt", spec)
    assert json.loads((folder / "config.json").read_text())["vision_config"]["num_patches"] == 36
    cfg = naflex.load_image_config(folder)
    assert (cfg.patch_size, cfg.max_num_patches) == (4, 36)
    ref = Siglip2Model.from_pretrained(folder).eval()
    batch, _, _ = naflex.preprocess_batch(images, cfg, pad_to=36)
    x, shapes = torch.from_numpy(batch.patches), torch.from_numpy(batch.spatial_shapes)
    with torch.no_grad():
        expected = ref.get_image_features(pixel_values=x, pixel_attention_mask=torch.from_numpy(batch.mask),
                                          spatial_shapes=shapes).pooler_output
        _maxdiff("random_model vs transformers", ours.vision(x, shapes)[1], expected, ATOL)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["siglip2-base-patch16-naflex", "siglip2-so400m-patch16-naflex"])
def test_real_shape_vision_parity(name, tmp_path, images):
    """Random weights at the hub checkpoints' vision shape (2 blocks), budgets 256 and 1024, vs Siglip2VisionModel."""
    from transformers import Siglip2VisionModel

    from siglite.registry import get_spec
    from siglite.checkpoints import random_model, save_checkpoint

    spec = get_spec(name)
    ours = random_model(spec, vision_layers=2, text=False)
    folder = save_checkpoint(ours, tmp_path / "ckpt", spec)
    ref = Siglip2VisionModel.from_pretrained(folder).eval()
    model = siglite.load(folder, device="cpu")
    assert model.image_config.max_num_patches == 256 and model.image_config.patch_size == 16
    for budget in (256, 1024):
        batch, _, _ = naflex.preprocess_batch(images, model.image_config, max_num_patches=budget, pad_to=budget)
        with torch.no_grad():
            expected = ref(pixel_values=torch.from_numpy(batch.patches), spatial_shapes=torch.from_numpy(
                batch.spatial_shapes), pixel_attention_mask=torch.from_numpy(batch.mask)).pooler_output
        _maxdiff(f"{name} budget {budget} pooler_output", model.image_features(images, max_num_patches=budget),
                 expected, ATOL)
