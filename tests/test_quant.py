"""INT8 post-training quantization: on a small model with injected activation outlier channels, plain per-tensor
quantization misses the fidelity bar and siglite's recipe meets it; the simulated integer arithmetic equals the
runtime's; the CLI flow writes a report and a folder that serves through the same API and CLI."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import siglite
from siglite.cli.main import main
from siglite.data.synthetic import CLASSNAMES, generate
from siglite.errors import SigliteError
from siglite.metrics import cosine_rows
from siglite.quant.calib import Calibration
from siglite.quant.int8 import RECIPES, FidelityTarget, Int8Form, SimLinear, plan
from siglite.quant.isa import ENV, detect, from_flags
from siglite.tasks.evaluate import fidelity, text_fidelity

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
pytest.importorskip("onnxscript", reason="the onnx extra (onnxscript, for export) is not installed")

BAR = {"mean": 0.995, "low": 0.99}  # issue 4: cosine mean and 1%-low against float32
SIZE = 32
TRAINED = Path(__file__).parent / "fixtures" / "trained-tiny"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def outlier_ckpt(tmp_path_factory) -> Path:
    """A small SigLIP (width 64, 3 vision / 2 text blocks) whose LayerNorms feed 4 channels 48-80x larger than the
    rest into every linear layer, as in trained ViTs; the float function is that of the random model."""
    from tokenizer_fixtures import make_spiece_tokenizer

    from siglite.registry import get_spec
    from siglite.checkpoints import random_model, save_checkpoint
    from siglite.testing import inject_outliers

    base = get_spec("siglip-base-patch16-224")
    small = dict(hidden_size=64, intermediate_size=256, num_attention_heads=4)
    spec = dataclasses.replace(
        base, vision={**base.vision, **small, "num_hidden_layers": 3, "image_size": SIZE, "patch_size": 8},
        text={**base.text, **small, "num_hidden_layers": 2, "max_position_embeddings": 16, "vocab_size": 600},
        image={**base.image, "height": SIZE, "width": SIZE})
    model = inject_outliers(random_model(spec, seed=3), channels=4, scale=80.0, seed=3)
    folder = tmp_path_factory.mktemp("outliers")
    save_checkpoint(model, folder, spec)
    make_spiece_tokenizer(folder, max_length=16)
    return folder


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("calib")
    for i, s in enumerate(generate(32, seed=11, image_size=SIZE)):
        s.image.save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def eval_set():
    """Held out: neither fits nor checks the recipe."""
    samples = generate(50, seed=12, image_size=SIZE)
    return [s.image for s in samples], [s.label for s in samples]


@pytest.fixture(scope="module")
def quantized(outlier_ckpt, calib_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("int8") / "model"
    assert main(["quantize", "--model", str(outlier_ckpt), "--calib", str(calib_dir), "--out", str(out),
                 "--num-calib", "24", "--num-check", "8", "--sensitivity-samples", "4", "--format", "json"]) == 0
    return out


def _misses_bar(fid: dict) -> bool:
    return fid["mean"] < BAR["mean"] or fid["p1"] < BAR["low"]


def test_recipe_meets_the_bar_where_naive_quantization_fails(outlier_ckpt, quantized, calib_dir, eval_set):
    reference = siglite.load(outlier_ckpt, device="cpu")
    int8 = siglite.load(quantized, engine="onnxruntime")
    images, labels = eval_set
    fid = fidelity(reference, int8, images, labels, CLASSNAMES, batch_size=8)
    text = text_fidelity(reference, int8, [f"a photo of a {c}" for c in CLASSNAMES])

    # Naive: per-tensor static activations, per-tensor weights, no migration, nothing kept in float32. Measured
    # in exact integer arithmetic (the simulation), which is the best case for it.
    px = _pixels(reference, images)
    fit = _pixels(reference, [Path(p) for p in sorted(calib_dir.iterdir())][:24])
    cal = Calibration(fit, px, [f"{c}" for c in CLASSNAMES[:16]], [f"a photo of a {c}" for c in CLASSNAMES], [])
    net = reference.engine.model
    naive = plan(net, cal, reference.tokenizer, "naive").fidelity["final"]
    plain = plan(net, cal, reference.tokenizer, "dynamic").fidelity["final"]

    print(f"\nlast_hidden_state cosine mean / 1%-low: naive {naive['vision_hidden']['mean']:.5f} / "
          f"{naive['vision_hidden']['p1']:.5f}, plain dynamic {plain['vision_hidden']['mean']:.5f} / "
          f"{plain['vision_hidden']['p1']:.5f}, siglite (runtime) {fid['hidden_cosine_mean']:.5f} / "
          f"{fid['hidden_cosine_p1']:.5f}; pooled: naive {naive['vision_pooled']['mean']:.5f}, siglite "
          f"{fid['pooled_cosine_mean']:.5f}; text: naive {naive['text_pooled']['mean']:.5f}, siglite "
          f"{text['text_cosine_mean']:.5f}; top-1 agreement {fid['top1_agreement']:.3f}")
    assert _misses_bar(naive["vision_hidden"]) or _misses_bar(naive["vision_pooled"])
    assert fid["hidden_cosine_mean"] >= BAR["mean"] and fid["hidden_cosine_p1"] >= BAR["low"]
    assert fid["pooled_cosine_mean"] >= BAR["mean"]
    assert text["text_cosine_mean"] >= BAR["mean"] and text["text_cosine_p1"] >= BAR["low"]


def _pixels(model, images) -> np.ndarray:
    from siglite.preprocess.image import preprocess_batch

    return preprocess_batch(images, model.image_config, "resize")[0]


def test_report_and_sidecar(quantized):
    report = json.loads((quantized / "quant_report.json").read_text())
    layers = report["layers"]
    assert len(layers) == 3 * 4 + 4 + 2 * 4 + 1  # vision blocks + pooling head, text blocks + head
    assert {lp["name"] for lp in layers if not lp["quantized"]} == set(report["float32_layers"])
    migrated = [lp for lp in layers if lp["alpha"] > 0]
    assert migrated and all(lp["fold"] for lp in migrated)  # outliers moved where a fold exists
    # the chosen alpha is the one with the smallest measured error
    for lp in layers:
        assert lp["errors"][str(lp["alpha"])] == min(lp["errors"].values())
    assert all(lp["sensitivity"] for lp in layers)  # asked for with --sensitivity-samples (default: only if needed)
    runtime = report["fidelity"]["runtime"]
    assert set(runtime) >= {"vision_hidden", "vision_pooled", "text_pooled", "zero_shot_top1_agreement"}
    md = (quantized / "quant_report.md").read_text()
    assert "## Fidelity against float32" in md and "vision last_hidden_state" in md
    isa = detect()  # the weight storage was chosen for this CPU, and the report and sidecar say which
    assert report["cpu_isa"]["name"] == isa.name and report["cpu_isa"]["weight_dtype"] == isa.weight_dtype
    assert report["recipe"]["weight_max"] == 127 and f"| CPU instruction set | {isa.name}" in md
    sidecar = json.loads((quantized / "siglite.json").read_text())
    assert sidecar["precision"] == "int8" and sidecar["engine"] == "onnxruntime"
    assert sidecar["quantization"]["recipe"] == "siglite"
    assert sidecar["quantization"]["weight_dtype"] == isa.weight_dtype and sidecar["quantization"]["cpu_isa"] == isa.name


def test_quantized_model_serves_through_api_and_cli(quantized, outlier_ckpt, sample_images, capsys):
    model = siglite.load(quantized, engine="onnxruntime")
    assert model.engine.precision == "int8"
    fp32 = siglite.load(outlier_ckpt)
    labels, prompts = ["cat", "dog"], ["This is a photo of cat.", "This is a photo of dog."]
    probs, ref = model.classify(sample_images, labels), fp32.classify(sample_images, labels)
    # Compared as logits (the sigmoid saturates): exp(t) * cos(image, text) + b, so |Δlogit| / exp(t) is the error of
    # the image-text cosine. Unit vectors moved by |Δu| change a cosine by at most |Δu_image| + |Δu_text| (triangle
    # inequality), with |Δu| = sqrt(2 (1 - cos(int8, float32))) per row: the probabilities follow from the features.
    logit = (lambda p: np.log(p) - np.log1p(-p))
    worst = float(np.abs(logit(probs) - logit(ref)).max()) / np.exp(model.engine.logit_scale)
    move = (lambda a, b: float(np.sqrt(2 * (1 - cosine_rows(a, b))).max()))
    bound = move(model.image_features(sample_images), fp32.image_features(sample_images)) \
        + move(model.text_features(prompts), fp32.text_features(prompts))
    with capsys.disabled():
        print(f"\nint8 vs float32 classify: worst image-text cosine error {worst:.2e} (feature bound {bound:.2e})")
    assert probs.shape == ref.shape == (len(sample_images), 2)
    assert worst <= bound + 1e-6 and worst < 0.02
    tokens = model.image_features(sample_images[:2], tokens=True)
    assert tokens.shape == (2, (SIZE // 8) ** 2, 64)
    assert main(["info", "--model", str(quantized), "--engine", "onnxruntime", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["precision"] == "int8"
    assert main(["classify", str(sample_images[0]), "--model", str(quantized), "--engine", "onnxruntime",
                 "--labels", "cat", "dog", "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["labels"]) == 2  # one record per image


def test_isa_from_cpu_flags():
    assert from_flags("fpu sse4_2 avx2 avx512f avx512_vnni").name == "avx512_vnni"
    assert from_flags("avx2 avx512_vnni amx_bf16 amx_int8").name == "amx"
    assert from_flags("avx avx2 avx_vnni").name == "avx_vnni"
    assert from_flags("fp asimd asimddp").name == "arm_dotprod"
    avx2, none, vnni = from_flags("sse4_2 avx avx2"), from_flags("fpu sse2"), from_flags("avx2 avx512_vnni")
    assert (avx2.name, avx2.exact, avx2.weight_dtype) == ("avx2", False, "uint8")
    assert (none.name, none.weight_dtype) == ("other", "uint8")
    assert (vnni.exact, vnni.weight_dtype) == (True, "int8")


def test_unknown_forced_isa_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv(ENV, "avx9000")
    with pytest.raises(SigliteError, match="SIGLITE_CPU_ISA='avx9000': unknown instruction set"):
        detect()


def _stored_weights(folder: Path) -> list[np.ndarray]:
    import onnx
    from onnx import numpy_helper

    return [numpy_helper.to_array(t) for f in sorted(folder.glob("*.onnx")) for t in onnx.load(str(f)).graph.initializer
            if t.name.endswith("_int8_w")]


@pytest.mark.parametrize("isa,bits,dtype,top", [("avx2", 8, np.uint8, 127), ("avx512_vnni", 8, np.int8, 127),
                                                ("avx2", 7, np.int8, 63)])
def test_forced_isa_picks_the_weight_storage(outlier_ckpt, calib_dir, tmp_path, monkeypatch, isa, bits, dtype, top):
    """Both branches, forced: full 8-bit weights either way, stored signed for a CPU whose u8*s8 products accumulate
    exactly and offset by 128 (u8*u8 kernels) for one where they can saturate; the report says which. 7-bit weights
    (``--weight-bits 7``) are stored signed everywhere (exact with u8*s8 kernels on any CPU)."""
    from siglite.tasks.quantize import quantize

    monkeypatch.setenv(ENV, isa)
    out = tmp_path / f"{isa}-{bits}"
    rep = quantize(outlier_ckpt, str(calib_dir), out, num_calib=16, num_check=8, weight_bits=bits,
                   progress=lambda s: None)
    weights = _stored_weights(out)
    assert weights and all(w.dtype == dtype for w in weights)
    signed = [w.astype(np.int16) - (128 if dtype == np.uint8 else 0) for w in weights]
    assert max(int(np.abs(w).max()) for w in signed) == top  # every row's largest weight lands on the range's end
    assert rep["cpu_isa"]["name"] == isa and rep["cpu_isa"]["forced"]
    assert rep["cpu_isa"]["weight_dtype"] == np.dtype(dtype).name and rep["recipe"]["weight_max"] == top
    assert ("uint8 offset by 128" in (out / "quant_report.md").read_text()) == (dtype == np.uint8)
    # measured here as this CPU runs the written form exactly (forcing VNNI on an AVX2 CPU measures the signed weights
    # converted to the offset form, not saturated), so the check holds and nothing is kept in float32 for a fault the
    # target CPU does not have
    assert os.environ[ENV] == isa  # and the forcing is back after the measurement
    assert min(v["mean"] for v in rep["fidelity"]["runtime"].values() if isinstance(v, dict)) >= BAR["mean"]
    assert rep["float32_layers"] == []
    if bits == 7:
        with pytest.raises(SigliteError, match="weight_bits=6"):
            quantize(outlier_ckpt, str(calib_dir), tmp_path / "six", weight_bits=6)


def test_weights_are_converted_losslessly_for_the_serving_cpu(outlier_ckpt, calib_dir, sample_images, tmp_path,
                                                              monkeypatch):
    """A model quantized for a VNNI CPU (signed 8-bit weights) loaded on a CPU whose u8*s8 kernels saturate (forced
    avx2) is served with its weights converted to the offset form at load time: exactly what quantizing for that
    CPU serves (same numbers, same kernels), the folder untouched. On an exact CPU it is served as stored."""
    import hashlib

    from siglite.engines.graph import _convert_to
    from siglite.tasks.quantize import quantize

    monkeypatch.setenv(ENV, "avx512_vnni")
    quantize(outlier_ckpt, str(calib_dir), tmp_path / "vnni", num_calib=16, num_check=8, progress=lambda s: None)
    digest = {f.name: hashlib.sha1(f.read_bytes()).hexdigest() for f in (tmp_path / "vnni").glob("*.onnx")}
    monkeypatch.setenv(ENV, "avx2")
    quantize(outlier_ckpt, str(calib_dir), tmp_path / "avx2", num_calib=16, num_check=8, progress=lambda s: None)
    converted = siglite.load(tmp_path / "vnni", engine="onnxruntime")
    native = siglite.load(tmp_path / "avx2", engine="onnxruntime")
    reference = siglite.load(outlier_ckpt, device="cpu")
    px = _pixels(reference, sample_images)
    got, want, ref = (m.engine.encode_image(px)[0] for m in (converted, native, reference))
    cos = cosine_rows(ref, got)
    print(f"\n8-bit signed weights served converted to u8*u8 (forced avx2): |diff| vs quantized for avx2 "
          f"{np.abs(got - want).max():.1e}; pooled cosine vs float32 mean {cos.mean():.5f} min {cos.min():.5f}")
    assert np.array_equal(got, want) and cos.min() >= BAR["mean"]
    assert digest == {f.name: hashlib.sha1(f.read_bytes()).hexdigest() for f in (tmp_path / "vnni").glob("*.onnx")}
    q = {"weight_dtype": "int8", "weight_max": 127}
    assert _convert_to(q, "uint8") == "uint8" and _convert_to(q, "int8") is None
    assert _convert_to({"weight_dtype": "uint8", "weight_max": 127}, "int8") == "int8"  # faster where exact
    assert _convert_to({"weight_max": 63}, "uint8") is None  # 7-bit signed weights (earlier versions): exact anywhere
    assert _convert_to(None, "uint8") is None  # not quantized


def test_convert_weights_is_lossless():
    from onnx import TensorProto, helper, numpy_helper

    from siglite.quant.onnx_int8 import convert_weights, quantize_graph
    from siglite.quant.int8 import Recipe

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 16)
    graph = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 16])],
        [numpy_helper.from_array(np.ascontiguousarray(lin.weight.detach().t().numpy()), "w")]),
        opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    quantize_graph(graph, {"layer": lin.weight}, Recipe())
    arrays = (lambda: {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer})
    signed = arrays()["w_int8_w"]
    assert signed.dtype == np.int8 and np.abs(signed).max() == 127 and not arrays()["w_int8_wzp"].any()
    assert convert_weights(graph, "uint8") == 1
    offset, zp = arrays()["w_int8_w"], arrays()["w_int8_wzp"]
    assert offset.dtype == zp.dtype == np.uint8 and (zp == 128).all()
    assert np.array_equal(offset.astype(np.int16) - 128, signed)
    assert convert_weights(graph, "uint8") == 0  # already offset
    assert convert_weights(graph, "int8") == 1 and np.array_equal(arrays()["w_int8_w"], signed)
    with pytest.raises(SigliteError, match="INT8 weight storage 'int4'"):
        convert_weights(graph, "int4")


def test_simulation_equals_the_runtime_integer_arithmetic():
    """One linear layer: `SimLinear` (what the recipe measures) against the ONNX graph ONNX Runtime runs, for dynamic
    and static activations, with 8-bit weights in both storage forms. Offset by 128 (u8*u8 kernels) they agree to
    float rounding on every CPU; signed (u8*s8) they do where the CPU accumulates exactly, and overflow AVX2's int16
    pair sums on CPUs without VNNI, which the printed line shows there."""
    from siglite.quant.int8 import Recipe

    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from siglite.quant.onnx_int8 import quantize_graph

    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 40)
    x = torch.randn(2, 7, 96) * 3
    x[..., 5] *= 60  # an outlier channel
    deviation = {}
    recipes = {"siglite": (RECIPES["siglite"], 0, 0), "static": (Recipe(activations="static"), 0, 0),
               "naive": (RECIPES["naive"], 0, 0), "float slice": (RECIPES["siglite"], 3, 0),
               "static float slice": (Recipe(activations="static"), 3, 0), "float rows": (RECIPES["siglite"], 0, 4),
               "float slice and rows": (RECIPES["siglite"], 3, 4), "per token": (RECIPES["siglite"], 0, 0),
               "per token, slice and rows": (RECIPES["siglite"], 3, 4)}
    for (name, (recipe, k, r)), dtype in itertools.product(recipes.items(), ("uint8", "int8")):
        tokens = name.startswith("per token")
        w = lin.weight.detach().t().numpy()
        graph = helper.make_model(helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y0"]), helper.make_node("Add", ["y0", "b"], ["y"])], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 7, 96])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 7, 40])],
            [numpy_helper.from_array(np.ascontiguousarray(w), "w"),
             numpy_helper.from_array(lin.bias.detach().numpy(), "b")]),
            opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
        act_range = (float(x[..., :96 - k].min()), float(x[..., :96 - k].max()))
        form = Int8Form(act_range, k, r, tokens)
        quantize_graph(graph, {"layer": lin.weight}, recipe, {"layer": form}, weight_dtype=dtype)
        sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"x": x.numpy()})[0]
        want = SimLinear(lin, recipe, form)(x).detach().numpy()
        deviation[name, dtype] = float(np.abs(got - want).max() / np.abs(want).max())
    for dtype in ("uint8", "int8"):
        print(f"\nruntime vs simulation, {dtype} weights, max |diff| / max |y|: "
              + ", ".join(f"{k} {v:.1e}" for (k, d), v in deviation.items() if d == dtype))
    exact = ("uint8", "int8") if os.environ.get(ENV) is None and detect().exact else ("uint8",)
    assert all(v <= 1e-5 for (_, d), v in deviation.items() if d in exact)


def test_smoothing_keeps_the_float_function_and_fallback_reaches_a_strict_target(outlier_ckpt, calib_dir):
    model = siglite.load(outlier_ckpt, device="cpu")
    px = _pixels(model, [Path(p) for p in sorted(calib_dir.iterdir())])
    cal = Calibration(px[:16], px[16:24], ["a cat", "two dogs", "a red car", "x"] * 3, ["a photo of a dog"] * 4, [])
    strict = FidelityTarget(mean=0.99999, low=0.99995)
    p = plan(model.engine.model, cal, model.tokenizer, "siglite", strict)
    with torch.inference_mode():
        h0, p0 = model.engine.model.vision(torch.from_numpy(px[16:24]))
        h1, p1 = p.model.vision(torch.from_numpy(px[16:24]))
    assert torch.allclose(h0, h1, atol=1e-4) and torch.allclose(p0, p1, atol=1e-4)  # migration is exact in float
    kept = [lp for lp in p.layers if not lp.quantized]
    assert kept, "a strict target must send some layers back to float32"
    before, after = p.fidelity["all_quantized"], p.fidelity["final"]
    assert strict.damage(after) < strict.damage(before)
    # the layers kept are the most damaging ones measured alone
    worst = sorted(p.layers, key=lambda lp: -strict.damage(lp.sensitivity))[:len(kept)]
    assert {lp.name for lp in worst} == {lp.name for lp in kept}


@pytest.mark.skipif(not (TRAINED / "config.json").is_file(), reason=f"trained fixture {TRAINED} not present yet")
def test_trained_fixture_keeps_top1(tmp_path):
    """On the trained fixture: the quantized model's zero-shot top-1 stays within 0.2 points of float32."""
    from siglite.tasks.quantize import quantize
    from siglite.tasks.evaluate import zero_shot
    from siglite.data.datasets import LabelledImages

    size = siglite.load(TRAINED).image_config.height
    calib = [s.image for s in generate(48, seed=21, image_size=size)]
    quantize(TRAINED, calib, tmp_path / "int8", num_calib=40, num_check=8, progress=lambda s: None)
    test = generate(200, seed=22, image_size=size)
    data = LabelledImages([s.image for s in test], [s.label for s in test], CLASSNAMES, "synthetic")
    ref = zero_shot(siglite.load(TRAINED, device="cpu"), data)
    got = zero_shot(siglite.load(tmp_path / "int8", engine="onnxruntime"), data)
    print(f"\ntrained-tiny zero-shot top-1: float32 {ref['acc1']:.4f}, int8 {got['acc1']:.4f}")
    assert abs(ref["acc1"] - got["acc1"]) <= 0.002 + 1e-9


def test_calibration_skips_bad_images_and_holds_some_out(calib_dir, tmp_path):
    import shutil

    from siglite.preprocess.image import ImageConfig
    from siglite.quant.calib import prepare

    folder = tmp_path / "calib"
    shutil.copytree(calib_dir, folder)
    (folder / "zz_broken.png").write_bytes(b"not a png")
    cfg = ImageConfig(height=SIZE, width=SIZE)
    cal = prepare(str(folder), cfg, num_images=100, num_check=5, num_texts=10)
    assert len(cal.failures) == 1 and "zz_broken.png" in cal.failures[0]
    assert len(cal.fit_pixels) == 32 - 5 and len(cal.check_pixels) == 5
    assert len(cal.check_texts) == 5 and len(cal.fit_texts) == 10
    assert not set(cal.fit_texts) & set(cal.check_texts)


def test_quantize_cli_errors_are_one_line(outlier_ckpt, tmp_path, capsys):
    code = main(["quantize", "--model", str(outlier_ckpt), "--calib", str(tmp_path / "nope"), "--out",
                 str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "nope" in err


@pytest.mark.slow
@pytest.mark.parametrize("outliers", [False, True], ids=["random", "outliers"])
def test_base_224_meets_the_bar(outliers, tmp_path):
    """Full size (minutes): base-224 random weights, with and without 6 outlier channels at 60-100x per LayerNorm.
    Speed is measured by benchmarks/int8_fidelity_speed.py."""
    from tokenizer_fixtures import make_spiece_tokenizer

    from siglite.tasks.quantize import quantize
    from siglite.registry import get_spec
    from siglite.checkpoints import random_model, save_checkpoint
    from siglite.testing import inject_outliers

    spec = get_spec("siglip-base-patch16-224")
    model = random_model(spec)
    if outliers:
        inject_outliers(model, channels=6, scale=100.0)
    save_checkpoint(model, tmp_path / "fp32", spec)
    make_spiece_tokenizer(tmp_path / "fp32", max_length=64)
    calib = [s.image for s in generate(48, seed=31, image_size=224)]
    quantize(tmp_path / "fp32", calib, tmp_path / "int8", num_calib=40, num_check=8, progress=print)
    samples = generate(32, seed=32, image_size=224)
    fid = fidelity(siglite.load(tmp_path / "fp32", device="cpu"), siglite.load(tmp_path / "int8", engine="onnxruntime"),
                   [s.image for s in samples], batch_size=8)
    print({k: v for k, v in fid.items() if "cosine" in k and k.endswith(("mean", "p1"))})
    assert fid["hidden_cosine_mean"] >= BAR["mean"] and fid["hidden_cosine_p1"] >= BAR["low"]
    assert fid["pooled_cosine_mean"] >= BAR["mean"]


def test_massive_fc2_inputs_builder():
    """The massive-activation builder puts a few tokens 450-1900x the median at fc2's input of the middle blocks, and
    leaves the other blocks alone."""
    from siglite.registry import get_spec
    from siglite.checkpoints import random_model
    from siglite.testing import massive_fc2_inputs

    spec = dataclasses.replace(get_spec("siglip-base-patch16-224"), vision={
        "hidden_size": 32, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 2,
        "image_size": 32, "patch_size": 4})
    model = random_model(spec, text=False).eval()
    before = [b.mlp.fc1.weight.clone() for b in model.vision.blocks]
    px = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (8, 3, 32, 32)).astype(np.float32))
    ratios = massive_fc2_inputs(model, px, seed=1)
    assert sorted(ratios) == [1, 2]  # the middle half of 4 blocks
    assert all(400 <= r <= 2000 for r in ratios.values()), ratios
    assert torch.equal(model.vision.blocks[0].mlp.fc1.weight, before[0])
    assert torch.equal(model.vision.blocks[3].mlp.fc1.weight, before[3])
    seen = {}
    h = model.vision.blocks[1].mlp.fc2.register_forward_hook(lambda _m, a, _o: seen.__setitem__(0, a[0].abs()))
    with torch.no_grad():
        model.vision(px)
    h.remove()
    x = seen[0].flatten(0, -2)
    hot = (x > 50 * x.median()).any(1)
    assert 0 < int(hot.sum()) <= 0.03 * len(hot)  # a few tokens, not whole channels


@pytest.mark.parametrize("start", [1, 2])
def test_sensitivity_from_a_cached_prefix_equals_the_full_forward(start):
    """The sensitivity pass re-runs only the blocks a layer reaches (`Probe.fidelity_from`, prefix cached once):
    same numbers as the full forward, for a change in a block (1) and in the head (2 = len(blocks))."""
    import copy

    from siglite.quant.int8 import Probe
    from siglite.registry import get_spec
    from siglite.checkpoints import random_model

    spec = dataclasses.replace(get_spec("siglip-base-patch16-224"), vision={
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "image_size": 16, "patch_size": 8})
    model = random_model(spec, text=False).eval()
    px = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (10, 3, 16, 16)).astype(np.float32))
    probe = Probe(model, px, None, None)
    cached = probe.block_inputs(model)
    changed = copy.deepcopy(model)
    layer = changed.vision.blocks[1].mlp.fc2 if start == 1 else changed.vision.head.mlp.fc1
    with torch.no_grad():
        layer.weight.add_(0.3 * torch.randn_like(layer.weight))
    full = probe.fidelity(changed, ("vision",))
    fast = probe.fidelity_from(changed, start, cached)
    assert full.keys() == fast.keys() == {"vision_hidden", "vision_pooled"}
    assert full["vision_pooled"]["mean"] < 0.9999  # the change is visible
    for k in full:
        assert abs(full[k]["mean"] - fast[k]["mean"]) < 1e-6 and abs(full[k]["p1"] - fast[k]["p1"]) < 1e-6


@pytest.fixture(scope="module")
def massive_ckpt(tmp_path_factory) -> tuple[Path, dict]:
    """A small vision tower (width 64, 4 blocks, 64 tokens) whose middle blocks' fc2 inputs carry massive
    activations: 2 channels where a few tokens are ~1600x the median (`siglite.testing.massive_fc2_inputs`)."""
    from siglite.checkpoints import random_model, save_checkpoint
    from siglite.registry import get_spec
    from siglite.testing import massive_fc2_inputs
    from siglite.preprocess.image import ImageConfig, preprocess_batch

    base = get_spec("siglip-base-patch16-224")
    spec = dataclasses.replace(base, vision={
        **base.vision, "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
        "image_size": 64, "patch_size": 8}, image={**base.image, "height": 64, "width": 64})
    model = random_model(spec, text=False, seed=0).eval()
    px = preprocess_batch([s.image for s in generate(8, seed=5, image_size=64)], ImageConfig(64, 64), "resize")[0]
    with torch.no_grad():
        ratios = massive_fc2_inputs(model, torch.from_numpy(px), seed=1)
    folder = tmp_path_factory.mktemp("massive")
    save_checkpoint(model, folder, spec)
    return folder, ratios


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_massive_activations_meet_the_bar_with_every_linear_layer_int8(massive_ckpt, engine, tmp_path):
    """Issue 15: massive fc2-input activations (a few tokens ~1600x the median) pass the bar (token cosine mean >=
    0.999, 1%-low >= 0.998, pooled >= 0.999) with every linear layer in INT8: the two massive channels of the
    affected fc2 layers are computed in float32 beside the INT8 product, in the runtime that serves the model. The
    same recipe without that slice misses the bar (simulated, exact integer arithmetic)."""
    from siglite.quant.int8 import Recipe
    from siglite.tasks.quantize import quantize

    pytest.importorskip(engine)
    folder, ratios = massive_ckpt
    assert min(ratios.values()) > 400
    images = [s.image for s in generate(56, seed=6, image_size=64)]
    rep = quantize(folder, images[:40], tmp_path / "int8", engine=engine, num_calib=32, num_check=8,
                   progress=lambda s: None)
    assert rep["float32_layers"] == []
    sliced = {lp["name"]: lp["float_channels"] for lp in rep["layers"] if lp["float_channels"]}
    assert sliced == {"vision.blocks.1.mlp.fc2": 2, "vision.blocks.2.mlp.fc2": 2}, sliced
    made = {lp["name"]: lp["float_rows"] for lp in rep["layers"] if lp["float_rows"]}  # their producers
    assert made == {"vision.blocks.1.mlp.fc1": 2, "vision.blocks.2.mlp.fc1": 2}, made
    assert {lp["name"] for lp in rep["layers"] if lp["per_token"]} == set(sliced)  # per-token scales there only
    assert "outlier input channels in float32" in (tmp_path / "int8" / "quant_report.md").read_text()
    # stored as the serving runtime runs it exactly and fastest: OpenVINO signed, ONNX Runtime as this CPU needs
    stored = "int8" if engine == "openvino" else detect().weight_dtype
    assert rep["cpu_isa"]["weight_dtype"] == stored
    assert all(w.dtype == np.dtype(stored) for w in _stored_weights(tmp_path / "int8"))

    reference = siglite.load(folder, device="cpu")
    served = siglite.load(tmp_path / "int8", engine=engine)
    held = _pixels(reference, images[40:])
    ref_pooled, ref_tokens = reference.engine.encode_image(held, tokens=True)
    got_pooled, got_tokens = served.engine.encode_image(held, tokens=True)
    tok = cosine_rows(ref_tokens.reshape(-1, ref_tokens.shape[-1]), got_tokens.reshape(-1, got_tokens.shape[-1]))
    pooled = cosine_rows(ref_pooled, got_pooled)
    # without the float slice, the same plan (simulated) misses the bar
    net = reference.engine.model
    cal = Calibration(_pixels(reference, images[:32]), held, [], [], [])
    no_slice = plan(net, cal, None, Recipe(float_channels=(), sensitivity=False)).fidelity["final"]
    print(f"\nmassive ({', '.join(f'{r:.0f}x' for r in ratios.values())}), {engine}: token cosine mean "
          f"{tok.mean():.5f} 1%-low {np.percentile(tok, 1):.5f}, pooled {pooled.mean():.5f}; without the float "
          f"slice (simulated): tokens {no_slice['vision_hidden']['mean']:.5f}, pooled "
          f"{no_slice['vision_pooled']['mean']:.5f}")
    assert tok.mean() >= 0.999 and np.percentile(tok, 1) >= 0.998 and pooled.mean() >= 0.999
    assert no_slice["vision_hidden"]["mean"] < 0.999 or no_slice["vision_pooled"]["mean"] < 0.999


def test_moving_channels_last_keeps_the_function():
    from siglite.quant.smooth import channel_producer, move_channels_last

    assert channel_producer("vision.blocks.3.mlp.fc2") == "vision.blocks.3.mlp.fc1"
    assert channel_producer("vision.head.mlp.fc2") == "vision.head.mlp.fc1"
    assert channel_producer("vision.blocks.3.attn.proj") is None
    torch.manual_seed(0)
    mlp = torch.nn.Sequential()
    mlp.add_module("fc1", torch.nn.Linear(8, 16))
    mlp.add_module("act", torch.nn.GELU())
    mlp.add_module("fc2", torch.nn.Linear(16, 8))
    x = torch.randn(5, 8)
    before = mlp(x)
    perm = move_channels_last(mlp, "fc2", "fc1", torch.tensor([3, 11]))
    assert perm[-2:].tolist() == [3, 11] and sorted(perm.tolist()) == list(range(16))
    assert torch.allclose(mlp(x), before, atol=1e-6)


def test_quantize_measures_the_runtime_first_and_falls_back_only_when_it_misses(outlier_ckpt, calib_dir, tmp_path):
    """`siglite quantize` writes every layer in INT8 and measures it in the runtime; no simulation runs when that
    meets the target. A target the all-INT8 model misses makes it simulate, keep the most damaging layers in
    float32 and write the folder again, which then meets it in the runtime too."""
    from siglite.tasks.quantize import quantize

    easy = quantize(outlier_ckpt, str(calib_dir), tmp_path / "easy", num_calib=24, num_check=8,
                    target=FidelityTarget(0.99, 0.98), progress=lambda s: None)
    assert easy["float32_layers"] == [] and easy["fidelity"]["simulated"] == {}
    assert "sensitivity" not in easy["timings_s"]
    first = min(v["mean"] for k, v in easy["fidelity"]["runtime"].items() if k in ("vision_hidden", "text_pooled"))
    strict = FidelityTarget(mean=min(0.99999, 1 - (1 - first) / 3), low=0.99)
    lines = []
    hard = quantize(outlier_ckpt, str(calib_dir), tmp_path / "hard", num_calib=24, num_check=8, target=strict,
                    progress=lines.append)
    assert any("runtime misses the fidelity target" in line for line in lines)
    assert hard["float32_layers"] and hard["fidelity"]["simulated"]["all_quantized"]
    runtime = {k: v for k, v in hard["fidelity"]["runtime"].items() if k in ("vision_hidden", "vision_pooled",
                                                                              "text_pooled")}
    print(f"\nstrict target {strict.mean:.6f}: kept {len(hard['float32_layers'])} layers in float32, runtime "
          + ", ".join(f"{k} {v['mean']:.6f}" for k, v in runtime.items()))
    # the simulation met it; the runtime computes the same integers (to float rounding)
    assert all(v["mean"] >= strict.mean - 1e-5 and v["p1"] >= strict.low for v in runtime.values())
    assert min(v["mean"] for v in runtime.values()) > first
    sidecar = json.loads((tmp_path / "hard" / "siglite.json").read_text())
    assert sidecar["quantization"]["float32_layers"] == hard["float32_layers"]


def _tiny_text_spec(name: str, *, layers: int = 4, intermediate: int = 128, vocab: int = 500):
    """`name`'s architecture at toy size: a 1-block vision tower and a small text tower of 16 positions."""
    from siglite.registry import get_spec

    base = get_spec(name)
    return dataclasses.replace(base, vision={**base.vision, "hidden_size": 32, "intermediate_size": 64,
                                             "num_hidden_layers": 1, "num_attention_heads": 2},
                               text={**base.text, "hidden_size": 32, "intermediate_size": intermediate,
                                     "num_hidden_layers": layers, "num_attention_heads": 2, "vocab_size": vocab,
                                     "max_position_embeddings": 16})


@pytest.mark.parametrize("name", ["siglip-base-patch16-224", "clip-vit-base-patch32"])
def test_massive_fc2_inputs_builder_on_the_text_tower(name):
    """`massive_fc2_inputs(..., tower="text")` does to the text tower what it does to the vision one: token ids (SigLIP)
    or (ids, mask) (CLIP) in, a few positions 450-1900x the median at fc2's input of the middle blocks, the other
    blocks and the vision tower untouched; `fc2_input_ratios` measures the same ratios afterwards."""
    from siglite.checkpoints import random_model
    from siglite.testing import fc2_input_ratios, massive_fc2_inputs

    spec = _tiny_text_spec(name)
    model = random_model(spec, seed=0).eval()
    vision_before = {k: v.clone() for k, v in model.vision.state_dict().items()}
    before = [b.mlp.fc1.weight.clone() for b in model.text.blocks]
    rng = np.random.default_rng(0)
    ids = torch.from_numpy(rng.integers(3, 499, (16, 16)))
    lengths = torch.from_numpy(rng.integers(4, 17, 16))
    mask = (torch.arange(16)[None] < lengths[:, None]).long()
    ids[:, -1] = 499  # an EOS-like highest id somewhere, for CLIP's argmax pooling
    inputs = (ids, mask) if spec.family == "clip" else ids
    ratios = massive_fc2_inputs(model, inputs, seed=1, tower="text")
    print(f"\n{name} text fc2 input max/median: " + ", ".join(f"block {b} {r:.0f}x" for b, r in ratios.items()))
    assert sorted(ratios) == [1, 2]  # the middle half of 4 blocks
    assert all(400 <= r <= 2000 for r in ratios.values()), ratios
    assert fc2_input_ratios(model, inputs, tower="text", blocks=[1, 2]) == ratios
    assert torch.equal(model.text.blocks[0].mlp.fc1.weight, before[0])
    assert torch.equal(model.text.blocks[3].mlp.fc1.weight, before[3])
    assert all(torch.equal(v, vision_before[k]) for k, v in model.vision.state_dict().items())
    seen = {}
    h = model.text.blocks[1].mlp.fc2.register_forward_hook(lambda _m, a, _o: seen.__setitem__(0, a[0].abs()))
    with torch.no_grad():
        model.text(*inputs) if isinstance(inputs, tuple) else model.text(inputs)
    h.remove()
    x = seen[0].flatten(0, -2)
    hot = (x > 50 * x.median()).any(1)
    assert 0 < int(hot.sum()) <= 0.03 * len(hot)  # a few positions, not whole channels


def test_massive_fc2_inputs_builder_passes_over_channels_where_no_token_stands_out():
    """Inputs whose rows repeat (the same all-padding text 24 times: every position's row 24 times, so the top 0.5%
    of each channel is one value): no channel has a token above its quantile, so none is scaled (the scaling would be
    unbounded and fire at random on other inputs, as a CLIP text block did at 4e8x the median) and the tower keeps
    its weights."""
    from siglite.checkpoints import random_model
    from siglite.testing import massive_fc2_inputs

    spec = _tiny_text_spec("clip-vit-base-patch32")
    model = random_model(spec, seed=0).eval()
    before = {k: v.clone() for k, v in model.text.state_dict().items()}
    ids = torch.full((24, 16), 7)
    ids[:, -1] = 499
    ratios = massive_fc2_inputs(model, (ids, torch.ones_like(ids)), seed=1, tower="text")
    print(f"\nrepeated rows: fc2 input max/median {ratios}")
    assert all(torch.equal(v, before[k]) for k, v in model.text.state_dict().items())
    assert all(r < 100 for r in ratios.values())


def test_inject_outliers_reaches_the_text_tower_and_keeps_its_function():
    """`inject_outliers` on a text-only model (as benchmarks/int8_vs_nncf.py --tower text builds it): the text
    blocks' LayerNorm outputs get channels ~`scale`x the rest, the pooled output is unchanged (up to rounding)."""
    from siglite.checkpoints import random_model
    from siglite.testing import inject_outliers

    spec = _tiny_text_spec("siglip-base-patch16-224", layers=2, intermediate=64, vocab=300)
    model = random_model(spec, seed=0).eval()
    model.vision = None
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, 300, (4, 16)))
    with torch.no_grad():
        before = model.text(ids)[1]
        inject_outliers(model, channels=4, scale=80.0, seed=2)
        after = model.text(ids)[1]
        gains = model.text.blocks[0].ln1.weight.abs()
    print(f"\ntext pooled max |diff| after inject_outliers: {(after - before).abs().max():.2e}")
    assert torch.allclose(after, before, atol=1e-4, rtol=1e-4)
    assert int((gains > 20 * gains.median()).sum()) == 4
