"""Loading fails loudly, with one line naming the file or weight."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import siglite
from siglite.errors import LoadError


@pytest.fixture
def ckpt(tiny_spiece, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_spiece, folder)
    return folder


def _edit_weights(folder, fn):
    weights = load_file(folder / "model.safetensors")
    fn(weights)
    save_file(weights, folder / "model.safetensors")


def test_missing_folder(tmp_path):
    with pytest.raises(LoadError, match="no such folder"):
        siglite.load(tmp_path / "nope")


def test_missing_config(ckpt):
    (ckpt / "config.json").unlink()
    with pytest.raises(LoadError, match=r"no config\.json for the transformers layout"):
        siglite.load(ckpt)


def test_wrong_model_type(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    config["model_type"] = "bert"
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(LoadError, match="model_type .bert. is not a supported model"):
        siglite.load(ckpt)


def test_missing_weight(ckpt):
    _edit_weights(ckpt, lambda w: w.pop("vision_model.post_layernorm.weight"))
    with pytest.raises(LoadError, match=r"missing weight.*vision\.norm\.weight"):
        siglite.load(ckpt)


def test_unused_weight(ckpt):
    _edit_weights(ckpt, lambda w: w.__setitem__("vision_model.extra.weight", torch.zeros(3)))
    with pytest.raises(LoadError, match=r"unused weight.*vision_model\.extra\.weight"):
        siglite.load(ckpt)


def test_misshaped_weight(ckpt):
    _edit_weights(ckpt, lambda w: w.__setitem__("text_model.head.weight", torch.zeros(5, 5)))
    with pytest.raises(LoadError, match=r"text\.head\.weight has shape \(5, 5\)"):
        siglite.load(ckpt)


def test_missing_weights_file(ckpt):
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(LoadError, match="no weights"):
        siglite.load(ckpt)


def test_pickle_refused_unless_opted_in(ckpt, sample_images):
    ref = siglite.load(ckpt).image_features(sample_images[:1])
    torch.save(load_file(ckpt / "model.safetensors"), ckpt / "pytorch_model.bin")
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(LoadError, match="pickle checkpoints .* refused"):
        siglite.load(ckpt)
    torch.testing.assert_close(torch.from_numpy(siglite.load(ckpt, allow_pickle=True).image_features(sample_images[:1])),
                               torch.from_numpy(ref))


def test_missing_preprocessor_config(ckpt):
    for name in ("preprocessor_config.json", "processor_config.json"):  # 4.x and 5.x homes of the image processor
        (ckpt / name).unlink(missing_ok=True)
    with pytest.raises(LoadError, match=r"no image preprocessing config \(preprocessor_config\.json missing"):
        siglite.load(ckpt)


def test_corrupt_safetensors(ckpt):
    (ckpt / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(LoadError, match=r"model\.safetensors: cannot read"):
        siglite.load(ckpt)


def test_hub_id_offline_without_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(LoadError, match="google/siglip-base-patch16-224: cannot fetch"):
        siglite.load("siglip-base-patch16-224")


def test_hub_cache_layout_loads_offline(tiny_spiece, monkeypatch, tmp_path, sample_images):
    """A hub id resolves through huggingface_hub's cache when offline (the path users hit after a first download)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny-siglip"
    commit = "0" * 40
    shutil.copytree(tiny_spiece, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model = siglite.load("acme/tiny-siglip")
    assert model.image_features(sample_images[:1]).shape[0] == 1


def test_vision_only_checkpoint(tiny_spiece, tmp_path, sample_images):
    """A SiglipVisionModel checkpoint (the VLM vision tower, no text tower, no tokenizer) loads and matches."""
    from transformers import SiglipVisionModel

    ref = SiglipVisionModel.from_pretrained(tiny_spiece).eval()
    folder = tmp_path / "vision-only"
    ref.save_pretrained(folder)
    shutil.copy(tiny_spiece / "processor_config.json", folder)  # as transformers 5.x's SiglipProcessor saved it
    model = siglite.load(folder)
    assert model.tokenizer is None
    pixels = torch.rand(2, 3, 34, 34) * 2 - 1
    with torch.no_grad():
        want = ref(pixel_values=pixels)
    pooled, tokens = model.engine.encode_image(pixels.numpy(), tokens=True)
    torch.testing.assert_close(torch.from_numpy(tokens), want.last_hidden_state, atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.from_numpy(pooled), want.pooler_output, atol=1e-4, rtol=0)
    with pytest.raises(siglite.SigliteError, match="no tokenizer"):
        model.text_features(["a cat"])


def test_exported_folder_picks_its_engine(tiny_spiece, tmp_path, sample_images):
    """`siglite.load(DIR)` on an exported folder serves it with the engine its sidecar names, no engine= needed."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from siglite.export import export

    out = tmp_path / "onnx"
    export(tiny_spiece, out, "onnx")
    model = siglite.load(out)
    assert model.engine.name == "onnxruntime"
    np_ref = siglite.load(tiny_spiece).image_features(sample_images[:2])
    torch.testing.assert_close(torch.from_numpy(model.image_features(sample_images[:2])), torch.from_numpy(np_ref),
                               atol=1e-4, rtol=0)
