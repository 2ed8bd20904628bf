"""The GPU engine (siglite.engines.cuda).

Without a GPU these run its CPU path, which is the same code minus compile, graph capture and FP8 hardware: precision
handling, fp16 overflow safety on models whose residual stream exceeds fp16's range, the padding logic of the CUDA
graph runner, the overlapped-copy chunking, GPU-style preprocessing against PIL/cv2, the nvJPEG fallback, the CLI.
Tests marked `gpu` need CUDA (run them with `pytest -m gpu tests/test_cuda_engine.py` on the GPU box): parity of
bf16/fp16/fp8 with float32 on the device, CUDA graphs and compile against eager, fp16 on outlier models, nvJPEG.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import warnings

import numpy as np
import pytest
import torch

import siglite
from siglite.engines.cuda import (
    PRECISIONS,
    CudaEngine,
    GraphRunner,
    MixedLayerNorm,
    MixedLinear,
    chunks,
    parse_precision,
)
from siglite.engines.torch import TorchEngine
from siglite.errors import SigliteError
from siglite.metrics import cosine_summary
from siglite.preprocess.gpu import decode_batch_gpu, preprocess_tensor
from siglite.preprocess.image import ImageConfig, letterbox, preprocess_batch, resize
from siglite.quant.fp8 import FP8Linear, synthetic_pixels
from siglite.registry import get_spec
from siglite.checkpoints import random_model
from siglite.testing import amplify_residual, inject_outliers, massive_channels

FP16_COS = 0.9999  # issue 5: fp16 on outlier models, cosine vs float32
SMALL = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
         "image_size": 64, "patch_size": 8}
FP16_MAX = 65504.0
HAS_CUDA = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is False)")


def small_model(vision: dict | None = None, name: str = "siglip-base-patch16-224", **kw):
    spec = dataclasses.replace(get_spec(name), vision={**get_spec(name).vision, **(vision or SMALL)})
    return random_model(spec, text=False, **kw)


def residual_amax(model, pixels: np.ndarray) -> float:
    """Largest |value| in the float32 residual stream (block outputs) on these pixels."""
    seen = [0.0]
    hooks = [b.register_forward_hook(lambda _m, _i, out: seen.__setitem__(0, max(seen[0], float(out.abs().max()))))
             for b in model.vision.blocks]
    with torch.inference_mode():
        model.vision(torch.from_numpy(pixels))
    for h in hooks:
        h.remove()
    return seen[0]


# -- precisions and loading -------------------------------------------------------------------------------------------


def test_precision_names():
    assert parse_precision(None) == "bfloat16"
    assert parse_precision("bf16") == "bfloat16" and parse_precision("fp16") == "float16"
    assert parse_precision(torch.float16) == "float16" and parse_precision("fp8") == "fp8"
    with pytest.raises(SigliteError, match="unknown precision 'int3'"):
        parse_precision("int3")
    assert PRECISIONS["float16"].residual == torch.float32  # the fp16 overflow guard is data, not a branch


def test_no_gpu_is_a_clear_error(tiny_spiece):
    if HAS_CUDA:
        pytest.skip("a GPU is present: the default device is valid")
    with pytest.raises(SigliteError, match="needs a CUDA GPU"):
        siglite.load(tiny_spiece, engine="cuda")
    with pytest.raises(SigliteError, match="no CUDA GPU"):
        siglite.load(tiny_spiece, engine="cuda", device="cuda")


@pytest.mark.parametrize("precision", ["float16", "bfloat16", "fp8"])
def test_load_through_the_public_api(tiny_spiece, sample_images, precision):
    """siglite.load(..., engine="cuda", dtype=...) runs images and text end to end, close to the float32 engine."""
    ref = siglite.load(tiny_spiece)
    model = siglite.load(tiny_spiece, engine="cuda", device="cpu", dtype=precision)
    assert model.engine.name == "cuda" and model.engine.precision == precision
    floor = {"float16": 0.9999, "bfloat16": 0.999, "fp8": 0.99}[precision]
    img = cosine_summary(ref.image_features(sample_images), model.image_features(sample_images))
    tok = cosine_summary(ref.image_features(sample_images, tokens=True),
                       model.image_features(sample_images, tokens=True))
    txt = cosine_summary(ref.text_features(["a cat", "two dogs"]), model.text_features(["a cat", "two dogs"]))
    print(f"{precision}: pooled {img['mean']:.6f}, tokens {tok['mean']:.6f}, text {txt['mean']:.6f}")
    assert min(img["min"], tok["min"], txt["min"]) >= floor
    probs = model.classify(sample_images[:2], ["cat", "dog"])
    assert probs.shape == (2, 2) and np.isfinite(probs).all()


def test_cli_engine_and_precision(tiny_spiece, sample_images, tmp_path):
    from siglite.cli.main import main

    out = tmp_path / "emb.npy"
    args = ["encode", *map(str, sample_images[:3]), "--model", str(tiny_spiece), "--engine", "cuda", "--device", "cpu",
            "--precision", "fp16", "--out", str(out)]
    assert main(args) == 0
    api = siglite.load(tiny_spiece, engine="cuda", device="cpu", dtype="fp16").image_features(sample_images[:3])
    np.testing.assert_allclose(np.load(out), api, rtol=0, atol=1e-6)
    assert main(args[:-4] + ["--precision", "int3", "--out", str(out)]) == 1


def test_layers_are_converted_as_the_precision_says():
    engine = CudaEngine(small_model(), "cpu", "float16")
    b = engine.model.vision.blocks[0]
    assert isinstance(b.ln1, MixedLayerNorm) and b.ln1.weight.dtype == torch.float32
    assert b.attn.qkv.weight.dtype == torch.float16 and b.attn.qkv.out_dtype == torch.float16
    assert b.attn.proj.out_dtype == torch.float32 and b.mlp.fc2.out_dtype == torch.float32  # residual writers
    assert engine.model.vision.norm.out_dtype == torch.float32  # last_hidden_state
    fp8 = CudaEngine(small_model(), "cpu", "fp8", calib=synthetic_pixels(4, 64).numpy())
    b = fp8.model.vision.blocks[0]
    assert isinstance(b.attn.qkv, FP8Linear) and b.attn.qkv.qweight.dtype == torch.float8_e4m3fn
    assert isinstance(fp8.model.vision.head.kv, MixedLinear)  # the pooling head stays bf16
    x = torch.randn(2, 3, 64)
    assert MixedLinear(torch.nn.Linear(64, 16), torch.float16, torch.float32)(x).dtype == torch.float32


# -- fp16 overflow safety ---------------------------------------------------------------------------------------------


def test_fp16_on_an_amplified_outlier_model():
    """Residual stream past 65504 (function-preserving amplification) plus LayerNorm outlier channels: the plain fp16
    torch engine overflows; ours stays finite and matches float32 (of this model and of the unamplified one)."""
    original = inject_outliers(small_model())
    model = amplify_residual(copy.deepcopy(original), 2e4)
    pixels = synthetic_pixels(16, 64, seed=1).numpy()
    amax = residual_amax(model, pixels)
    print(f"float32 residual stream |max| = {amax:.3g}")
    assert amax > 4 * FP16_MAX, "the test model does not exceed fp16's range"
    ref_pooled, ref = TorchEngine(copy.deepcopy(model), "cpu").encode_image(pixels, tokens=True)
    _, unamplified = TorchEngine(copy.deepcopy(original), "cpu").encode_image(pixels, tokens=True)
    assert cosine_summary(unamplified, ref)["min"] > 0.99999  # amplification preserved the function
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, naive = TorchEngine(copy.deepcopy(model), "cpu", "float16").encode_image(pixels, tokens=True)
    assert not np.isfinite(naive).all(), "plain fp16 should overflow on this model (else the test proves nothing)"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # our engine warns on non-finite output: make that a failure
        pooled, hidden = CudaEngine(copy.deepcopy(model), "cpu", "float16").encode_image(pixels, tokens=True)
    assert np.isfinite(hidden).all() and np.isfinite(pooled).all()
    s, sp = cosine_summary(ref, hidden), cosine_summary(ref_pooled, pooled)
    print(f"fp16 vs fp32: last_hidden_state mean {s['mean']:.7f} min {s['min']:.7f}; pooled min {sp['min']:.7f}")
    assert s["min"] >= FP16_COS and sp["min"] >= FP16_COS
    assert cosine_summary(unamplified, hidden)["min"] >= FP16_COS


def test_fp16_with_massive_activation_channels():
    model = massive_channels(small_model())
    pixels = synthetic_pixels(16, 64, seed=2).numpy()
    amax = residual_amax(model, pixels)
    assert amax > FP16_MAX, f"residual |max| {amax:.3g} does not exceed fp16's range"
    ref_pooled, ref = TorchEngine(copy.deepcopy(model), "cpu").encode_image(pixels, tokens=True)
    pooled, hidden = CudaEngine(model, "cpu", "float16").encode_image(pixels, tokens=True)
    s, sp = cosine_summary(ref, hidden), cosine_summary(ref_pooled, pooled)
    print(f"massive channels (|max| {amax:.3g}): fp16 tokens min {s['min']:.7f}, pooled min {sp['min']:.7f}")
    assert np.isfinite(hidden).all() and s["min"] >= FP16_COS and sp["min"] >= FP16_COS


# -- CUDA graph logic (run without capture on the CPU) ---------------------------------------------------------------


def test_graph_runner_buckets_pads_and_slices():
    seen = []

    def fn(x):
        seen.append(x.shape[0])
        return x * 2, None, x.sum(dim=1)

    runner = GraphRunner(fn, (8, 1, 4), capture=False)
    assert runner.sizes == (1, 4, 8) and runner.max_size == 8
    assert [runner.bucket(n) for n in (1, 2, 3, 4, 5, 8)] == [1, 4, 4, 4, 8, 8]
    x = torch.arange(3 * 5, dtype=torch.float32).reshape(3, 5)
    a, none, c = runner(x)
    assert seen == [4] and none is None
    torch.testing.assert_close(a, x * 2, rtol=0, atol=0)
    torch.testing.assert_close(c, x.sum(dim=1), rtol=0, atol=0)
    runner(x[:1])
    assert seen == [4, 1] and set(runner.captured) == {1, 4}
    with pytest.raises(ValueError, match="1..8"):
        runner(torch.zeros(9, 5))
    assert chunks(11, 4) == [(0, 4), (4, 8), (8, 11)] and chunks(0, 4) == []


def test_graph_path_equals_eager_on_cpu():
    """The engine through the runner (chunks of 8, a remainder of 3 padded to 4) equals the engine without it."""
    model = small_model()
    pixels = synthetic_pixels(11, 64, seed=3).numpy()
    eager = CudaEngine(copy.deepcopy(model), "cpu", "float16", graphs=False)
    padded = CudaEngine(copy.deepcopy(model), "cpu", "float16", graphs=True, graph_sizes=(1, 4, 8))
    p0, h0 = eager.encode_image(pixels, tokens=True)
    p1, h1 = padded.encode_image(pixels, tokens=True)
    assert set(padded.runner.captured) == {4, 8}
    assert p1.shape == p0.shape == (11, 64) and h1.shape == h0.shape == (11, 64, 64)
    np.testing.assert_allclose(p1, p0, rtol=0, atol=1e-5)
    np.testing.assert_allclose(h1, h0, rtol=0, atol=1e-5)
    t1, _ = padded.encode_image(torch.from_numpy(pixels))  # tensors are accepted as well
    np.testing.assert_allclose(t1, p0, rtol=0, atol=1e-5)


# -- GPU-style preprocessing and decode -------------------------------------------------------------------------------


def _image(h, w, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (3 * xx + 5 * yy) % 256], -1)
    return np.clip(base + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8)


LEVEL = 2 / 255  # one uint8 level in SigLIP's [-1, 1] pixel units


@pytest.mark.parametrize("resample", [3, 2, 0])
@pytest.mark.parametrize("hw", [(480, 640), (100, 37), (37, 100), (300, 20), (50, 50), (20, 30)],
                         ids=["down", "tall", "wide", "tall-thin", "up-square", "up"])
def test_gpu_resize_is_close_to_pil(resample, hw):
    cfg = ImageConfig(height=64, width=64, resample=resample)
    img = _image(*hw)
    ours = preprocess_tensor(torch.from_numpy(img).permute(2, 0, 1), cfg, "resize").numpy()
    ref = resize(img, cfg)
    diff = np.abs(ours - ref) / LEVEL
    print(f"resample {resample} {hw}: mean |Δ| {diff.mean():.3f} levels, max {diff.max():.1f}, "
          f"> 1 level: {(diff > 1.01).mean():.2%}")
    assert ours.shape == ref.shape and ours.dtype == np.float32
    assert diff.mean() < 0.5 and diff.max() <= 1.01  # floating vs fixed point: at most one level


@pytest.mark.parametrize("hw", [(480, 640), (128, 64), (500, 377), (97, 41), (20, 30)],
                         ids=["down", "integer", "fractional", "small-fractional", "up"])
def test_gpu_letterbox_is_close_to_cv2(hw):
    cfg = ImageConfig(height=64, width=64)
    img = _image(*hw, seed=1)
    ours = preprocess_tensor(torch.from_numpy(img).permute(2, 0, 1), cfg, "letterbox").numpy()
    ref = letterbox(img, cfg)
    diff = np.abs(ours - ref) / LEVEL
    print(f"letterbox {hw}: mean |Δ| {diff.mean():.3f} levels, max {diff.max():.1f}")
    assert ours.shape == ref.shape
    assert diff.mean() < 0.1 and diff.max() <= 1.01  # ties round differently (cv2 integer paths round half up)


def test_exif_orientations_match_pil():
    import PIL.Image
    import PIL.ImageOps

    from siglite.preprocess.gpu import _orient

    arr = _image(5, 8)
    for orientation in range(1, 9):
        img = PIL.Image.fromarray(arr)
        exif = img.getexif()
        exif[0x0112] = orientation
        buf = io.BytesIO()
        img.save(buf, format="PNG", exif=exif.tobytes())
        expected = np.asarray(PIL.ImageOps.exif_transpose(PIL.Image.open(io.BytesIO(buf.getvalue()))))
        ours = _orient(torch.from_numpy(arr).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(ours, expected, err_msg=f"orientation {orientation}")


def test_decode_falls_back_to_the_cpu(sample_images, tmp_path):
    """Without torchvision or CUDA, decode_batch_gpu is preprocess_batch, moved to the device; bad files skipped."""
    cfg = ImageConfig(height=32, width=32)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    items = [sample_images[0].read_bytes(), bad, *sample_images[1:3]]
    pixels, ok, failures = decode_batch_gpu(items, cfg, device="cpu", on_error="skip")
    ref, ref_ok, ref_failures = preprocess_batch(items, cfg, on_error="skip")
    assert ok == ref_ok == [0, 2, 3] and [i for i, _ in failures] == [1] and failures == ref_failures
    np.testing.assert_array_equal(pixels.numpy(), ref)
    with pytest.raises(siglite.ImageError, match="bad.jpg"):
        decode_batch_gpu(items, cfg, device="cpu")


# -- on the GPU -------------------------------------------------------------------------------------------------------


def _so400m(layers: int = 4, outliers: bool = False):
    spec = get_spec("siglip-so400m-patch14-384")
    model = random_model(spec, text=False, vision_layers=layers)
    return inject_outliers(model) if outliers else model


def _fp32_reference(model, pixels):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False  # the patch convolution would otherwise run in TF32
    return TorchEngine(copy.deepcopy(model), "cuda").encode_image(pixels, tokens=True)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("precision,mean,p1", [("bfloat16", 0.999, 0.998), ("float16", 0.9999, 0.9999),
                                               ("fp8", 0.995, 0.99)])
@pytest.mark.parametrize("outliers", [False, True], ids=["random", "outliers"])
def test_gpu_parity_with_float32(precision, mean, p1, outliers):
    model = _so400m(outliers=outliers)
    pixels = synthetic_pixels(32, 384, seed=1).numpy()
    ref_pooled, ref = _fp32_reference(model, pixels)
    engine = CudaEngine(copy.deepcopy(model), "cuda", precision)
    if precision == "fp8" and torch.cuda.get_device_capability() >= (8, 9):
        assert all(m.backend == "scaled_mm" for m in engine.model.modules() if isinstance(m, FP8Linear))
    pooled, hidden = engine.encode_image(pixels, tokens=True)
    s, sp = cosine_summary(ref, hidden), cosine_summary(ref_pooled, pooled)
    print(f"{precision} ({'outliers' if outliers else 'random'}): last_hidden_state mean {s['mean']:.6f} "
          f"1%-low {s['p1']:.6f}; pooled mean {sp['mean']:.6f}")
    assert np.isfinite(hidden).all() and s["mean"] >= mean and s["p1"] >= p1 and sp["mean"] >= mean


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("precision", ["bfloat16", "fp8"])
def test_gpu_graphs_and_compile_equal_eager(precision):
    model = _so400m(layers=2)
    pixels = synthetic_pixels(11, 384, seed=2).numpy()
    calib = synthetic_pixels(8, 384).numpy()
    eager = CudaEngine(copy.deepcopy(model), "cuda", precision, compile=None, graphs=False, calib=calib)
    graphs = CudaEngine(copy.deepcopy(model), "cuda", precision, compile=None, graphs=True, graph_sizes=(1, 4, 8),
                        calib=calib)
    full = CudaEngine(copy.deepcopy(model), "cuda", precision, compile="default", graphs=True,
                      graph_sizes=(1, 4, 8), calib=calib)
    p0, h0 = eager.encode_image(pixels[:8], tokens=True)
    p1, h1 = graphs.encode_image(pixels[:8], tokens=True)
    # same kernels at the same batch size: replaying the graph reproduces eager (exactly, unless cuBLAS picks another
    # algorithm inside the capture)
    worst = float(np.abs(h1 - h0).max())
    print(f"{precision}: graph replay vs eager at batch 8, worst |Δ| {worst:.3e}")
    assert cosine_summary(h0, h1)["min"] > 0.99999 and cosine_summary(p0, p1)["min"] > 0.99999
    q0, _ = eager.encode_image(pixels)  # 8 + 3; the 3 run padded to 4 in the graph engines
    for engine in (graphs, full):
        q, _ = engine.encode_image(pixels, tokens=True)
        s = cosine_summary(q0, q)
        print(f"{precision} compile={engine.compile_mode} graphs: pooled vs eager min cosine {s['min']:.6f}")
        assert s["min"] > 0.9999
    assert full.compile_mode == "default", "torch.compile fell back to eager"
    assert set(graphs.runner.captured) == {4, 8}


@pytest.mark.gpu
@needs_gpu
def test_gpu_fp16_no_overflow_on_outlier_models():
    model = amplify_residual(_so400m(layers=4, outliers=True), 2e4)
    pixels = synthetic_pixels(8, 384, seed=3).numpy()
    ref_pooled, ref = _fp32_reference(model, pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pooled, hidden = CudaEngine(model, "cuda", "float16").encode_image(pixels, tokens=True)
    s, sp = cosine_summary(ref, hidden), cosine_summary(ref_pooled, pooled)
    print(f"fp16 amplified so400m: tokens min {s['min']:.7f}, pooled min {sp['min']:.7f}")
    assert np.isfinite(hidden).all() and s["min"] >= FP16_COS and sp["min"] >= FP16_COS


@pytest.mark.gpu
@needs_gpu
def test_gpu_decode_matches_cpu_preprocessing():
    pytest.importorskip("torchvision", reason="nvJPEG decoding needs torchvision")
    import PIL.Image

    cfg = ImageConfig(height=384, width=384)
    data = []
    for seed, hw in enumerate([(480, 640), (300, 200), (1024, 768)]):
        buf = io.BytesIO()
        PIL.Image.fromarray(_image(*hw, seed=seed)).save(buf, format="JPEG", quality=92)
        data.append(buf.getvalue())
    pixels, ok, failures = decode_batch_gpu(data + [b"\xff\xd8garbage"], cfg, on_error="skip")
    assert pixels.is_cuda and ok == [0, 1, 2] and [i for i, _ in failures] == [3]
    ref, _, _ = preprocess_batch(data, cfg)
    diff = (pixels.cpu().numpy() - ref) / LEVEL
    print(f"nvJPEG + GPU resize vs PIL: mean |Δ| {np.abs(diff).mean():.3f} levels, max {np.abs(diff).max():.1f}")
    assert np.abs(diff).mean() < 1.5  # libjpeg vs nvJPEG IDCT and chroma upsampling differ by a level or two
