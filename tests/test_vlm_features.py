"""VLM feature taps: `image_features(tokens=True, layer=K, post_norm=...)` equals transformers'
`output_hidden_states=True` `hidden_states[K]` (worst |diff| printed), later blocks are never run, and the same
layer is served by an ONNX / OpenVINO export and an INT8 quantization cut at that layer (which refuse any other)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import siglite
from conftest import make_checkpoint
from siglite.cli.main import main
from siglite.errors import SigliteError

ATOL = 1e-4  # float32 parity bar (issue 11)
DEPTH = 4
# (layer, post_norm): the embeddings, every block from either end, a multi-layer concat (Molmo-style)
CASES = [(0, False), (1, False), (2, True), (-2, False), (-2, True), (-1, False), (-1, True), (4, True),
         ([-2, 1], False), ([-1, -3], True)]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def deep_ckpt(tmp_path_factory):
    """A 4-block tower (tiny_spiece has 2), so that 'second to last' and 'middle' are different blocks."""
    return make_checkpoint(tmp_path_factory.mktemp("deep"), depth=DEPTH, seed=3)


@pytest.fixture(scope="module")
def pixels_and_reference(deep_ckpt, sample_images):
    """transformers' hidden states (and post_layernorm) for the sample images, with its own processor."""
    from PIL import Image
    from transformers import SiglipModel
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    images = [Image.open(p) for p in sample_images]
    pixels = SiglipImageProcessorPil.from_pretrained(deep_ckpt)(images=images, return_tensors="pt")["pixel_values"]
    ref = SiglipModel.from_pretrained(deep_ckpt, attn_implementation="eager").eval()
    with torch.no_grad():
        out = ref.vision_model(pixel_values=pixels, output_hidden_states=True)
        hidden = [h.numpy() for h in out.hidden_states]
        normed = [ref.vision_model.post_layernorm(h).numpy() for h in out.hidden_states]
    assert len(hidden) == DEPTH + 1
    return sample_images, hidden, normed, out.last_hidden_state.numpy()


def expected(layer, post_norm, hidden, normed):
    source = normed if post_norm else hidden
    layers = [layer] if isinstance(layer, int) else layer
    return np.concatenate([source[k] for k in layers], axis=-1)


@pytest.mark.parametrize("layer,post_norm", CASES)
def test_layer_parity_with_transformers(deep_ckpt, pixels_and_reference, layer, post_norm):
    images, hidden, normed, _ = pixels_and_reference
    model = siglite.load(deep_ckpt, device="cpu")
    got = model.image_features(images, tokens=True, layer=layer, post_norm=post_norm)
    want = expected(layer, post_norm, hidden, normed)
    worst = float(np.abs(got - want).max())
    print(f"layer={layer} post_norm={post_norm}: shape {got.shape}, worst |diff| vs transformers {worst:.2e}")
    assert got.shape == want.shape and worst <= ATOL


def test_default_stays_last_hidden_state(deep_ckpt, pixels_and_reference):
    images, _, normed, last = pixels_and_reference
    model = siglite.load(deep_ckpt, device="cpu")
    got = model.image_features(images, tokens=True)
    assert np.abs(got - last).max() <= ATOL
    # last_hidden_state is hidden_states[-1] after the final LayerNorm: the same as layer=-1, post_norm=True
    assert np.abs(model.image_features(images, tokens=True, layer=-1, post_norm=True) - normed[-1]).max() <= ATOL


def test_blocks_after_the_layer_are_not_run(deep_ckpt, sample_images):
    model = siglite.load(deep_ckpt, device="cpu")
    tower = model.engine.model.vision
    ran = []
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: ran.append(k)) for k, b in enumerate(tower.blocks)]
    hooks.append(tower.norm.register_forward_hook(lambda m, i, o: ran.append("norm")))
    hooks.append(tower.head.register_forward_hook(lambda m, i, o: ran.append("head")))
    try:
        model.image_features(sample_images[:1], tokens=True, layer=-3)  # hidden_states[2]: blocks 0 and 1
        assert ran == [0, 1]
        ran.clear()
        model.image_features(sample_images[:1], tokens=True, layer=[1, -2], post_norm=True)
        assert ran == [0, 1, 2, "norm", "norm"]
    finally:
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("kwargs,message", [
    ({"tokens": True, "layer": 5}, "out of range"),
    ({"tokens": True, "layer": -6}, "out of range"),
    ({"tokens": False, "layer": -2}, "tokens=True"),
    ({"tokens": True, "post_norm": True}, "post_norm applies"),
])
def test_bad_layer_options_are_one_line_errors(deep_ckpt, sample_images, kwargs, message):
    model = siglite.load(deep_ckpt, device="cpu")
    with pytest.raises(SigliteError, match=message):
        model.image_features(sample_images[:1], **kwargs)


def test_cli_encode_layer(deep_ckpt, pixels_and_reference, tmp_path, capsys):
    images, hidden, normed, _ = pixels_and_reference
    out = tmp_path / "tok.npy"
    assert main(["encode", *map(str, images), "--model", str(deep_ckpt), "--device", "cpu", "--tokens",
                 "--layer", "-2", "--post-norm", "--out", str(out)]) == 0
    assert np.abs(np.load(out) - normed[-2]).max() <= ATOL
    assert main(["encode", *map(str, images), "--model", str(deep_ckpt), "--device", "cpu", "--tokens",
                 "--layer", "-2", "1", "--out", str(out), "--overwrite"]) == 0
    assert np.abs(np.load(out) - expected([-2, 1], False, hidden, normed)).max() <= ATOL
    capsys.readouterr()
    assert main(["encode", *map(str, images), "--model", str(deep_ckpt), "--layer", "9", "--tokens", "--out",
                 str(out), "--overwrite"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "out of range" in err


def test_embed_layer_tokens(deep_ckpt, pixels_and_reference, tmp_path):
    pytest.importorskip("pyarrow", reason="the data extra (pyarrow) is not installed")
    images, hidden, _, _ = pixels_and_reference
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, p in enumerate(images):  # sorted names keep the input order
        (folder / f"{i:02d}{p.suffix}").write_bytes(p.read_bytes())
    out = tmp_path / "emb"
    common = ["embed", str(folder), "--model", str(deep_ckpt), "--device", "cpu", "--tokens", "--out", str(out),
              "--no-progress", "--workers", "1"]
    args = [*common, "--layer", "-2"]
    assert main(args) == 0
    tokens = np.load(out / "tokens" / "part-00000.npy")
    assert np.abs(tokens - hidden[-2]).max() <= ATOL
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["layer"] == -2 and manifest["counts"]["embedded"] == len(images)
    assert main(args) == 0  # resumes: nothing left to do, no error
    assert main([*common, "--layer", "-1"]) == 1  # another layer into the same folder is refused


# -- exported and quantized towers cut at a layer ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def cut_onnx(deep_ckpt, tmp_path_factory):
    """Cut at two layers (Molmo-style), with the final LayerNorm: the deepest tap decides where the graph ends."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    pytest.importorskip("onnxscript", reason="the onnx extra (onnxscript, for export) is not installed")
    out = tmp_path_factory.mktemp("cut") / "onnx"
    assert main(["export", "--model", str(deep_ckpt), "--format", "onnx", "--out", str(out), "--layer", "1", "-2",
                 "--post-norm"]) == 0
    return out


def test_export_cut_graph_has_only_the_blocks_it_needs(cut_onnx):
    import onnx

    from siglite.export import read_sidecar

    sc = read_sidecar(cut_onnx)
    assert sc.vision_layer == [1, DEPTH - 1] and sc.post_norm is True
    assert sc.outputs["vision"] == ["last_hidden_state"] and sc.dims["vision_blocks"] == DEPTH - 1
    graph = onnx.load(str(cut_onnx / "vision.onnx"))
    n_matmul = sum(node.op_type in ("MatMul", "Gemm") for node in graph.graph.node)
    # every block has 4 linear layers (qkv, proj, fc1, fc2) and 2 attention matmuls; no pooling head
    print(f"cut at block {DEPTH - 1} of {DEPTH}: {n_matmul} MatMul/Gemm nodes")
    assert n_matmul == 6 * (DEPTH - 1)


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_export_cut_parity_and_refusal(cut_onnx, pixels_and_reference, engine):
    pytest.importorskip(engine, reason=f"the {engine} runtime is not installed")
    images, _, normed, _ = pixels_and_reference
    served = siglite.load(cut_onnx, engine=engine)
    got = served.image_features(images, tokens=True, layer=[1, -2], post_norm=True)
    worst = float(np.abs(got - np.concatenate([normed[1], normed[-2]], -1)).max())
    print(f"{engine}, tower cut at layers [1, -2] with post_norm: worst |diff| vs transformers {worst:.2e}")
    assert worst <= ATOL
    assert np.array_equal(served.image_features(images, tokens=True, layer=[1, DEPTH - 1], post_norm=True), got)
    for kwargs in ({"layer": [1, -2]}, {"layer": -2, "post_norm": True}, {}):
        with pytest.raises(SigliteError, match=r"cut at layer \[1, 3\] with post_norm"):
            served.image_features(images, tokens=True, **kwargs)


def test_full_export_refuses_a_layer(cut_onnx, sample_images, tmp_path):
    """A whole-tower export has only last_hidden_state: a layer is refused, naming the export that would serve it.
    (The cut export's graph stands in for a whole one; the sidecar is what the check reads.)"""
    import shutil

    folder = tmp_path / "full"
    shutil.copytree(cut_onnx, folder)
    sidecar = json.loads((folder / "siglite.json").read_text())
    (folder / "siglite.json").write_text(json.dumps({**sidecar, "vision_layer": None, "post_norm": False}))
    with pytest.raises(SigliteError, match="--layer -2"):
        siglite.load(folder).image_features(sample_images[:1], tokens=True, layer=-2)


def test_quantize_cut_tower(deep_ckpt, pixels_and_reference, tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    pytest.importorskip("onnxscript", reason="the onnx extra (onnxscript, for export) is not installed")
    from PIL import Image

    images, hidden, _, _ = pixels_and_reference
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(calib / f"{i}.png")
    out = tmp_path / "int8"
    assert main(["quantize", "--model", str(deep_ckpt), "--calib", str(calib), "--out", str(out), "--num-calib", "12",
                 "--num-check", "4", "--layer", "-2", "--sensitivity-samples", "0", "--format", "json"]) == 0
    report = json.loads((out / "quant_report.json").read_text())
    assert report["vision_layer"] == [DEPTH - 1]
    names = [lp["name"] for lp in report["layers"] if lp["name"].startswith("vision.")]
    assert names and not any(n.startswith(f"vision.blocks.{DEPTH - 1}.") or ".head." in n for n in names)
    cos = report["fidelity"]["runtime"]["vision_hidden"]["mean"]
    got = siglite.load(out).image_features(images, tokens=True, layer=-2)
    a, b = got.reshape(len(images), -1), hidden[-2].reshape(len(images), -1)
    vs_ref = float(np.min((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))
    print(f"INT8 cut at layer -2: report cosine mean {cos:.5f}; min cosine vs transformers on sample images "
          f"{vs_ref:.5f}")
    assert cos > 0.99 and vs_ref > 0.98
