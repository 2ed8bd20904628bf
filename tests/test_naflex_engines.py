"""SigLIP 2 NaFlex beyond the torch engine, at a fixed patch budget: INT8 quantization (calibrated on patches at the
images' own aspect ratios; served by ONNX Runtime and OpenVINO), `siglite bench` with transformers'
Siglip2VisionModel as the reference, the cuda engine's code path on the CPU, and the CLI's --max-num-patches.
Every comparison is against float32 torch (itself equal to transformers, tests/test_naflex.py) and prints numbers."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import siglite
from naflex_fixtures import aspect_images, make_naflex_checkpoint
from siglite.cli.main import main
from siglite.errors import SigliteError
from siglite.metrics import cosine_rows, cosine_summary
from siglite.preprocess import naflex

BAR = {"mean": 0.995, "low": 0.99}  # the INT8 bar: cosine mean and 1%-low against float32
BUDGET = 48  # the INT8 graph's patch budget: below the processor's 64, not a square (a 6x8 grid fits, 7x7 does not)
TEXTS = ["a photo of a cat", "a scanned document", "x", "two dogs on a beach at night"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Patch 4, an 8x8 position grid, processor budget 64 (tests/naflex_fixtures.py)."""
    return make_naflex_checkpoint(tmp_path_factory.mktemp("naflex"))


@pytest.fixture(scope="module")
def fp32(folder):
    return siglite.load(folder, device="cpu")


@pytest.fixture(scope="module")
def images():
    """Held out from calibration: tall, wide, square, tiny and odd aspect ratios (another seed)."""
    return aspect_images(7)


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("calib")
    for i, img in enumerate(aspect_images(0) + aspect_images(1) + aspect_images(2)):
        img.save(out / f"{i:02d}.png")
    return out


@pytest.fixture(scope="module")
def quantized(folder, calib_dir, tmp_path_factory):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    pytest.importorskip("onnxscript", reason="the onnx extra (onnxscript, for export) is not installed")
    out = tmp_path_factory.mktemp("int8") / "model"
    assert main(["quantize", "--model", str(folder), "--calib", str(calib_dir), "--out", str(out), "--num-calib", "9",
                 "--num-check", "6", "--max-num-patches", str(BUDGET), "--quiet", "--format", "json"]) == 0
    return out


# -- INT8 ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_int8_serves_aspect_ratios(runtime, quantized, fp32, images, capsys):
    """The INT8 folder, served by either runtime, against float32 torch on unseen images of five aspect ratios, at
    the graph's budget and at a smaller one (padded up to it): pooled and per-image token cosine meet the bar."""
    pytest.importorskip(runtime, reason=f"the {runtime} engine is an optional extra")
    served = siglite.load(quantized, engine=runtime)
    assert served.engine.precision == "int8" and served.engine.num_patches == BUDGET
    lines = []
    for budget in (16, BUDGET):
        pooled = cosine_summary(fp32.image_features(images, max_num_patches=budget),
                                served.image_features(images, max_num_patches=budget))
        ref_t = fp32.image_features(images, tokens=True, max_num_patches=budget)
        got_t = served.image_features(images, tokens=True, max_num_patches=budget)
        assert [len(t) for t in got_t] == [len(t) for t in ref_t]  # rows*cols per image, padding removed
        tokens = cosine_rows(np.concatenate(ref_t), np.concatenate(got_t))  # per token
        lines.append(f"{runtime} budget {budget}: pooled cosine mean {pooled['mean']:.5f} min {pooled['min']:.5f}; "
                     f"token cosine mean {tokens.mean():.5f} min {tokens.min():.5f}")
        assert pooled["mean"] >= BAR["mean"] and pooled["min"] >= BAR["low"], lines[-1]
        assert tokens.mean() >= BAR["mean"] and np.percentile(tokens, 1) >= BAR["low"], lines[-1]
    text = cosine_summary(fp32.text_features(TEXTS), served.text_features(TEXTS))
    lines.append(f"{runtime} text pooled cosine mean {text['mean']:.5f} min {text['min']:.5f}")
    assert text["mean"] >= BAR["mean"] and text["min"] >= BAR["low"]
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    with pytest.raises(SigliteError, match=f"max_num_patches={BUDGET}"):
        served.image_features(images, max_num_patches=64)


def test_int8_report_and_sidecar_record_the_budget(quantized, calib_dir, fp32):
    sidecar = json.loads((quantized / "siglite.json").read_text())
    assert sidecar["precision"] == "int8" and sidecar["inputs"]["vision"] == ["pixel_values", "spatial_shapes"]
    assert sidecar["dims"]["num_patches"] == BUDGET and sidecar["quantization"]["max_num_patches"] == BUDGET
    report = json.loads((quantized / "quant_report.json").read_text())
    assert report["max_num_patches"] == BUDGET and report["calibration"]["max_num_patches"] == BUDGET
    assert report["calibration"]["fit_images"] == 9 and report["calibration"]["check_images"] == 6
    runtime = report["fidelity"]["runtime"]
    assert {"vision_hidden", "vision_pooled", "text_pooled", "zero_shot_top1_agreement"} <= set(runtime)
    assert runtime["vision_hidden"]["p1"] >= BAR["low"] and runtime["vision_pooled"]["mean"] >= BAR["mean"]
    # the plan's simulation (same calibration, every layer INT8 as written: none was kept in float32) is the
    # runtime's arithmetic: the same numbers, to rounding
    from siglite.quant.calib import prepare
    from siglite.quant.int8 import plan

    assert report["float32_layers"] == []
    cal = prepare(calib_dir, fp32.image_config, num_images=9, num_check=6, max_num_patches=BUDGET)
    sim = plan(fp32.engine.model, cal, fp32.tokenizer, "siglite").fidelity["all_quantized"]
    for key in ("vision_hidden", "vision_pooled"):
        assert abs(sim[key]["mean"] - runtime[key]["mean"]) < 2e-4, (key, sim[key], runtime[key])
    assert f"NaFlex patch budget {BUDGET}" in (quantized / "quant_report.md").read_text()


def _inputs(images, cfg, budget, pad_to):
    from siglite.quant.calib import VisionInputs

    batch, _, _ = naflex.preprocess_batch(images, cfg, max_num_patches=budget, pad_to=pad_to)
    return VisionInputs(torch.from_numpy(batch.patches), torch.from_numpy(batch.spatial_shapes))


@pytest.mark.parametrize("start", [1, 2])
def test_probe_carries_the_key_mask(fp32, images, start):
    """The quantizer's probes run NaFlex inputs with the attention key mask: the cached-prefix pass equals the full
    forward (a change in block 1 / in the head), and padding to a longer length changes nothing."""
    from siglite.quant.int8 import Probe

    model = fp32.engine.model
    cfg = fp32.image_config
    probe = Probe(model, _inputs(images, cfg, 32, 32), None, None)
    longer = Probe(model, _inputs(images, cfg, 32, 64), None, None)
    pooled = (probe.reference["vision_pooled"] - longer.reference["vision_pooled"]).abs().max()
    hidden = (probe.reference["vision_hidden"] - longer.reference["vision_hidden"][:, :32]).abs().max()
    assert pooled < 1e-5 and hidden < 1e-5 and longer.reference["vision_hidden"][:, 32:].abs().max() == 0
    changed = copy.deepcopy(model)
    layer = changed.vision.blocks[1].mlp.fc2 if start == 1 else changed.vision.head.mlp.fc1
    with torch.no_grad():
        layer.weight.add_(0.3 * torch.randn_like(layer.weight))
    full = probe.fidelity(changed, ("vision",))
    fast = probe.fidelity_from(changed, start, probe.block_inputs(model))
    assert full["vision_pooled"]["mean"] < 0.9999  # the change is visible
    for k in full:
        assert abs(full[k]["mean"] - fast[k]["mean"]) < 1e-6 and abs(full[k]["p1"] - fast[k]["p1"]) < 1e-6


def test_outlier_weights_the_recipe_meets_the_bar_where_plain_int8_fails(calib_dir, capsys):
    """A NaFlex tower whose LayerNorms feed 4 channels 48-80x larger than the rest into every linear layer (as in
    trained ViTs; `siglite.testing.inject_outliers`, the float function unchanged), quantized on NaFlex calibration
    patches (budget 48): per-tensor INT8 ("naive", "dynamic") misses the bar, siglite's recipe meets it. Measured in
    the simulation, which equals the runtime's arithmetic (previous test)."""
    from siglite.checkpoints import random_model
    from siglite.quant.calib import prepare
    from siglite.quant.int8 import plan
    from siglite.registry import Spec
    from siglite.testing import inject_outliers

    tower = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4)
    spec = Spec(name="tiny-naflex", hub_id="x/tiny-naflex", vision={**tower, "image_size": 32, "patch_size": 4},
                family="siglip2-naflex", text={**tower, "vocab_size": 100, "max_position_embeddings": 8},
                tokenizer="tokenizers", image={"patch_size": 4, "max_num_patches": 64, "resample": 2,
                                               "image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    model = inject_outliers(random_model(spec, seed=3, text=False), channels=4, scale=80.0, seed=3)
    cal = prepare(calib_dir, naflex.NaflexConfig(patch_size=4, max_num_patches=64), num_images=9, num_check=6,
                  max_num_patches=BUDGET)
    got = {r: plan(model, cal, None, r, sensitivity_samples=0).fidelity["final"] for r in ("naive", "dynamic",
                                                                                          "siglite")}
    with capsys.disabled():
        print("\noutlier NaFlex tower, simulated INT8 cosine mean / 1%-low: " + "; ".join(
            f"{r} hidden {f['vision_hidden']['mean']:.5f}/{f['vision_hidden']['p1']:.5f} pooled "
            f"{f['vision_pooled']['mean']:.5f}/{f['vision_pooled']['p1']:.5f}" for r, f in got.items()))
    for r in ("naive", "dynamic"):
        assert got[r]["vision_hidden"]["mean"] < BAR["mean"] or got[r]["vision_pooled"]["mean"] < BAR["mean"]
    for k in ("vision_hidden", "vision_pooled"):
        assert got["siglite"][k]["mean"] >= BAR["mean"] and got["siglite"][k]["p1"] >= BAR["low"]


def test_calibration_patches_at_the_budget(calib_dir, fp32):
    from siglite.quant.calib import prepare

    cal = prepare(calib_dir, fp32.image_config, num_images=9, num_check=6, max_num_patches=20)
    assert cal.fit_pixels.shape == (9, 20, 48) and cal.check_pixels.shape == (6, 20, 48)
    assert (cal.fit_shapes.prod(1) <= 20).all() and len(set(map(tuple, cal.fit_shapes))) > 2  # aspect ratios kept
    assert cal.describe()["max_num_patches"] == 20
    with pytest.raises(SigliteError, match="letterbox"):
        prepare(calib_dir, fp32.image_config, num_images=4, num_check=2, preprocess="letterbox")


# -- bench ---------------------------------------------------------------------------------------------------------


def test_bench_times_siglite_and_the_transformers_reference(folder):
    """Model mode feeds both sides the same padded patches (their outputs agree to fp32 rounding, so the reference
    runs the same work); e2e runs each side's own NaFlex processor; ratios come out of one run."""
    from siglite.tasks.bench import bench, siglite_target, synthetic_images, transformers_target

    imgs = synthetic_images(3, size=(60, 200))
    batch, _, _ = naflex.preprocess_batch(imgs, naflex.NaflexConfig(patch_size=4, max_num_patches=24),
                                          pad_to=24)
    ours = siglite_target(folder, "torch", device="cpu", max_num_patches=24).run_pixels(batch)[0]
    ref = transformers_target(folder, device="cpu", max_num_patches=24).run_pixels(batch)
    print(f"\nbench inputs: siglite vs Siglip2VisionModel pooler_output worst |Δ| {np.abs(ours - ref).max():.2e}")
    assert np.abs(ours - ref).max() < 1e-4
    records = bench(folder, engines=["torch"], batch_sizes=[2], modes=["model", "e2e"], iters=1, warmup=0,
                    device="cpu", baseline="transformers", max_num_patches=24, images=imgs)
    assert {(r["engine"], r["mode"]) for r in records} == {(e, m) for e in ("torch", "transformers")
                                                          for m in ("model", "e2e")}
    assert all(r["max_num_patches"] == 24 and r["image_size"] == "24 patches" for r in records)
    assert all(r["ratio_vs_transformers"] > 0 for r in records if r["engine"] == "torch")


def test_bench_cli_on_an_int8_folder_and_errors(quantized, tiny_spiece, capsys):
    assert main(["bench", "--model", str(quantized), "--batch-sizes", "2", "--iters", "1", "--warmup", "0",
                 "--format", "json", "--quiet"]) == 0
    (rec,) = json.loads(capsys.readouterr().out)
    assert rec["precision"] == "int8" and rec["max_num_patches"] == BUDGET
    for argv, code in ((["--model", str(quantized), "--max-num-patches", "64"], 1),  # above the graph's budget
                       (["--model", str(tiny_spiece), "--max-num-patches", "64"], 1),  # not NaFlex
                       (["--model", str(quantized), "--max-num-patches", "0"], 2)):  # usage error
        assert main(["bench", *argv, "--batch-sizes", "1", "--iters", "1", "--warmup", "0", "--quiet"]) == code
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and ("NaFlex" in err or "64" in err or "positive" in err), err


# -- cuda engine (CPU emulation) -------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision,atol", [("float32", 1e-5), ("float16", 2e-2), ("bfloat16", 1e-1)])
@pytest.mark.parametrize("graphs", [False, True])
def test_cuda_engine_runs_naflex_on_cpu(folder, fp32, images, precision, atol, graphs):
    """The cuda engine's NaFlex path (patches + grids through the graph runner, padded to the fixed budget) on the
    CPU, against the torch engine: float32 to rounding, half precisions within their cosine."""
    model = siglite.load(folder, engine="cuda", device="cpu", dtype=precision, graphs=graphs, graph_sizes=(1, 2, 4))
    assert model.engine.num_patches == 64  # the checkpoint processor's budget
    for budget in (16, 64):
        got = model.image_features(images, max_num_patches=budget, batch_size=3)
        ref = fp32.image_features(images, max_num_patches=budget)
        tokens = [np.abs(a - b).max() for a, b in zip(model.image_features(images, tokens=True, max_num_patches=budget),
                                                      fp32.image_features(images, tokens=True, max_num_patches=budget))]
        print(f"cuda-on-cpu {precision} graphs={graphs} budget {budget}: pooled worst |Δ| "
              f"{np.abs(got - ref).max():.2e}, cosine min {cosine_rows(ref, got).min():.6f}; tokens worst |Δ| "
              f"{max(tokens):.2e}")
        assert np.abs(got - ref).max() <= atol and cosine_rows(ref, got).min() >= 0.999
    with pytest.raises(SigliteError, match="fixed max_num_patches=64"):
        model.image_features(images[:1], max_num_patches=100)


def test_cuda_engine_naflex_options_and_errors(folder, fp32, images):
    model = siglite.load(folder, engine="cuda", device="cpu", dtype="float32", max_num_patches=24)
    assert model.engine.num_patches == 24 and model.engine.describe()["num_patches"] == 24
    got, ref = model.image_features(images, tokens=True), fp32.image_features(images, tokens=True, max_num_patches=24)
    assert [len(t) for t in got] == [len(t) for t in ref]  # the engine's budget is the default
    with pytest.raises(SigliteError, match="FP8"):
        siglite.load(folder, engine="cuda", device="cpu", dtype="fp8")
    with pytest.raises(SigliteError, match="spatial_shapes"):
        model.engine.encode_image(np.zeros((1, 24, 48), np.float32))


# -- the CLI's --max-num-patches -------------------------------------------------------------------------------------


def test_cli_max_num_patches(folder, fp32, images, tiny_spiece, sample_images, tmp_path, capsys):
    paths = []
    for i, img in enumerate(images):
        paths.append(str(tmp_path / f"{i}.png"))
        img.save(paths[-1])
    out = tmp_path / "emb.npy"
    assert main(["encode", *paths, "--model", str(folder), "--device", "cpu", "--max-num-patches", "16", "--out",
                 str(out), "--quiet"]) == 0
    np.testing.assert_allclose(np.load(out), fp32.image_features(paths, max_num_patches=16), atol=1e-5)
    assert main(["embed", str(tmp_path), "--model", str(folder), "--device", "cpu", "--max-num-patches", "16",
                 "--out", str(tmp_path / "shards"), "--quiet", "--workers", "1"]) == 0
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["preprocess"]["image"]["max_num_patches"] == 16
    capsys.readouterr()
    for argv, code, what in (
            (["encode", str(sample_images[0]), "--model", str(tiny_spiece), "--max-num-patches", "16"], 1, "NaFlex"),
            (["encode", paths[0], "--model", str(folder), "--max-num-patches", "-3"], 2, "positive"),
            (["encode", paths[0], "--model", str(folder), "--max-num-patches", "many"], 2, "positive"),
            (["export", "--model", str(tiny_spiece), "--max-num-patches", "16"], 1, "NaFlex")):
        assert main([*argv, "--out", str(tmp_path / "x.npy" if argv[0] == "encode" else tmp_path / "x")]) == code
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and what in err, err
    assert main(["serve", "--model", str(tiny_spiece), "--max-num-patches", "16"]) == 1  # before binding a port
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "NaFlex" in err, err
    for cmd in (["encode"], ["embed"], ["eval", "zeroshot"], ["eval", "fidelity"], ["classify"], ["bench"],
                ["quantize"], ["export"], ["serve"]):
        main([*cmd, "--help"])
        assert "--max-num-patches" in capsys.readouterr().out, cmd


def test_eval_fidelity_of_the_int8_folder(folder, quantized, images, tmp_path, capsys):
    """`siglite eval fidelity` on NaFlex: both models at the candidate's budget (the INT8 graph's, or a smaller
    --max-num-patches), each image's own tokens compared."""
    for i, img in enumerate(images):
        img.save(tmp_path / f"{i}.png")
    for extra, want in (([], BUDGET), (["--max-num-patches", "16"], 16)):
        capsys.readouterr()
        assert main(["eval", "fidelity", "--model", str(folder), "--device", "cpu", "--candidate", str(quantized),
                     "--candidate-engine", "onnxruntime", "--images", str(tmp_path), "--format", "json", "--quiet",
                     *extra]) == 0
        rec = json.loads(capsys.readouterr().out)
        with capsys.disabled():
            print(f"\neval fidelity budget {want}: tokens cosine mean {rec['hidden_cosine_mean']:.5f} / 1%-low "
                  f"{rec['hidden_cosine_p1']:.5f}, pooled {rec['pooled_cosine_mean']:.5f}")
        assert rec["n"] == len(images) and rec["hidden_cosine_p1"] >= BAR["low"]
        assert rec["pooled_cosine_mean"] >= BAR["mean"]


# -- serve -----------------------------------------------------------------------------------------------------------


def test_serve_embeds_naflex_images(folder, quantized, fp32, images):
    """`siglite serve` (the local app) on a NaFlex model at a chosen budget and on the INT8 folder: each image is
    patchified at its aspect ratio, a batch padded (to the graph's budget for the INT8 one); the embeddings equal the
    library's."""
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    import httpx
    from test_serve import ThreadServer, data_uri, png_bytes, wait_ready

    from siglite.serve.app import ServeSettings, build_local_app

    small = siglite.load(folder, device="cpu").set_patch_budget(16)
    int8 = siglite.load(quantized)
    srv = ThreadServer(build_local_app({"nf": small, "nf8": int8}, ServeSettings(max_batch_size=4, workers=1))).start()
    try:
        wait_ready(srv.url)
        body = [data_uri(png_bytes(img)) for img in images]
        for name, want in (("nf", fp32.image_features(images, max_num_patches=16)),
                           ("nf8", int8.image_features(images))):
            r = httpx.post(f"{srv.url}/v1/embeddings", json={"model": name, "input": body, "modality": "image",
                                                              "encoding_format": "float"}, timeout=60)
            assert r.status_code == 200, r.text
            got = np.array([d["embedding"] for d in r.json()["data"]], np.float32)
            want = want / np.linalg.norm(want, axis=1, keepdims=True)  # the API returns unit vectors by default
            print(f"serve {name}: worst |Δ| vs the library {np.abs(got - want).max():.2e}")
            if name == "nf":
                assert np.abs(got - want).max() < 1e-4
            else:  # INT8 activation scales are per batch (dynamic): the server batches 4 + 1, the library 5
                assert cosine_rows(want, got).min() >= 0.999
    finally:
        srv.stop()
