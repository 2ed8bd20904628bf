"""FP8 W8A8 (siglite.quant.fp8), checked on the CPU by exact emulation.

Scales are compared with hand-computed values; the layer with its arithmetic written out by hand; the scaled_mm call
convention with torch's CPU `_scaled_mm`; outlier migration for exact function preservation; and the whole recipe for
fidelity against float32 (last_hidden_state cosine mean >= 0.995, 1%-low >= 0.99), on a small random model and on the
same model with injected activation outlier channels, next to naive per-tensor FP8 without outlier handling.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from siglite.engines.torch import TorchEngine
from siglite.metrics import cosine_summary
from siglite.model import Block, TowerConfig
from siglite.quant import fp8
from siglite.quant.fp8 import (
    E4M3_MAX,
    RECIPES,
    FP8Linear,
    dequantize,
    quantize,
    quantize_vision,
    synthetic_pixels,
    token_scales,
    weight_scales,
)
from siglite.quant.smooth import BLOCK_LAYERS, migrate, smoothing_factors
from siglite.registry import get_spec
from siglite.checkpoints import random_model
from siglite.testing import inject_outliers

COS_MEAN, COS_P1 = 0.995, 0.99  # issue 5's FP8 targets for last_hidden_state vs float32
SMALL = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 6, "num_attention_heads": 4,
         "image_size": 64, "patch_size": 8}  # 64 tokens; every dimension a multiple of 16, as scaled_mm needs


def small_model(outliers: bool = False):
    spec = dataclasses.replace(get_spec("siglip-base-patch16-224"), vision=SMALL)
    model = random_model(spec, text=False)
    return inject_outliers(model) if outliers else model


# -- scales -----------------------------------------------------------------------------------------------------------


def test_weight_scales_per_channel_and_per_tensor_by_hand():
    w = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [448.0, 1.0, -896.0]])
    ch = weight_scales(w, "channel")
    assert ch.shape == (3, 1)
    torch.testing.assert_close(ch[:, 0], torch.tensor([2 / 448, fp8.MIN_AMAX / 448, 896 / 448]), rtol=0, atol=0)
    assert float(weight_scales(w, "tensor")) == 896 / 448
    # every value here is a multiple of its row's amax/448 that E4M3 holds exactly: quantization is lossless
    q = quantize(w, ch)
    assert q.dtype == torch.float8_e4m3fn
    torch.testing.assert_close(q.float()[0], torch.tensor([224.0, -448.0, 112.0]), rtol=0, atol=0)
    torch.testing.assert_close(dequantize(q, ch), w, rtol=0, atol=0)


def test_token_scales_by_hand():
    x = torch.tensor([[[1.0, -3.0, 2.0], [0.5, 0.25, -0.125]], [[0.0, 0.0, 0.0], [-896.0, 1.0, 2.0]]])
    s = token_scales(x)
    assert s.shape == (2, 2, 1)
    expected = torch.tensor([[3.0, 0.5], [fp8.MIN_AMAX, 896.0]]) / 448
    torch.testing.assert_close(s[..., 0], expected, rtol=0, atol=0)


def test_quantize_rounds_to_nearest_e4m3_and_saturates():
    one = torch.tensor(1.0)
    # E4M3 near 0.3: 0.28125 and 0.3125 (step 1/32 in [0.25, 0.5)); 0.3 is nearer 0.3125
    assert float(quantize(torch.tensor(0.3), one).float()) == 0.3125
    # 1.0625 is halfway between 1.0 and 1.125: ties go to the even mantissa, 1.0
    assert float(quantize(torch.tensor(1.0625), one).float()) == 1.0
    # past the largest finite value: saturate, never inf/NaN
    assert float(quantize(torch.tensor(1e6), one).float()) == E4M3_MAX
    assert float(quantize(torch.tensor(-1e6), one).float()) == -E4M3_MAX


def test_smoothing_factors_by_hand():
    act_amax = torch.tensor([4.0, 1.0])
    w = torch.tensor([[1.0, -4.0], [0.5, 2.0]])  # column amax 1, 4
    torch.testing.assert_close(smoothing_factors(act_amax, w, 0.5), torch.tensor([2.0, 0.5]))
    torch.testing.assert_close(smoothing_factors(act_amax, w, 1.0), act_amax)
    torch.testing.assert_close(smoothing_factors(act_amax, w, 0.0), torch.tensor([1.0, 0.25]))


# -- the layer --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", ["dynamic", "static", "naive"])
def test_fp8_linear_equals_hand_written_arithmetic(recipe):
    gen = torch.Generator().manual_seed(0)
    w, b = torch.randn(48, 32, generator=gen), torch.randn(48, generator=gen)
    x = torch.randn(2, 5, 32, generator=gen).to(torch.bfloat16)
    r = RECIPES[recipe]
    act_scale = torch.tensor(3.7 / E4M3_MAX) if r.activations == "static" else None
    layer = FP8Linear(w, b, r, act_scale=act_scale, backend="emulate")
    # by hand: scales, saturating cast, float32 product, rounding to bf16, bias in bf16
    sw = w.abs().amax(1, keepdim=True) / 448 if r.weights == "channel" else w.abs().amax() / 448
    x2 = x.reshape(-1, 32).float()
    sx = x2.abs().amax(1, keepdim=True) / 448 if r.activations == "token" else act_scale
    xq = (x2 / sx).clamp(-448, 448).to(torch.float8_e4m3fn).float() * sx
    wq = (w / sw).to(torch.float8_e4m3fn).float() * sw
    expected = ((xq @ wq.t()).to(torch.bfloat16) + b.to(torch.bfloat16)).reshape(2, 5, 48)
    out = layer(x)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 5, 48)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    rel = float((out.float() - x.float() @ w.t() - b).norm() / (x.float() @ w.t() + b).norm())
    assert rel < 0.08, f"FP8 product is off by {rel:.3f} relative to float32"


@pytest.mark.parametrize("recipe", ["dynamic", "static", "naive"])
def test_scaled_mm_call_matches_emulation(recipe):
    """The arguments given to torch._scaled_mm (operand layout, rowwise/tensorwise scales) are right: on the CPU,
    torch's reference _scaled_mm gives the emulation's result to bf16 rounding."""
    gen = torch.Generator().manual_seed(1)
    w, b = torch.randn(64, 48, generator=gen), torch.randn(64, generator=gen)
    x = torch.randn(7, 48, generator=gen).to(torch.bfloat16)
    r = RECIPES[recipe]
    act_scale = torch.tensor(4.0 / E4M3_MAX) if r.activations == "static" else None
    emu = FP8Linear(w, b, r, act_scale=act_scale, backend="emulate")(x)
    try:
        hw = FP8Linear(w, b, r, act_scale=act_scale, backend="scaled_mm")(x)
    except (RuntimeError, NotImplementedError) as e:
        pytest.skip(f"this torch build has no CPU _scaled_mm: {e}")
    worst = float((hw.float() - emu.float()).abs().max())
    print(f"{recipe}: scaled_mm vs emulation worst |Δ| = {worst:.3e}")
    torch.testing.assert_close(hw.float(), emu.float(), rtol=2 ** -7, atol=1e-2)


def test_static_recipe_needs_a_scale():
    with pytest.raises(ValueError, match="act_scale"):
        FP8Linear(torch.ones(16, 16), None, RECIPES["static"])


# -- outlier migration ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", ["attn.qkv", "attn.proj", "mlp.fc1"])
def test_migration_preserves_the_block_function(layer):
    cfg = TowerConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
    torch.manual_seed(0)
    block = Block(cfg).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(2, 9, 32)
    in_features = block.get_submodule(layer).in_features
    s = torch.exp(torch.randn(in_features) * 2)  # factors from ~0.02 to ~50
    with torch.no_grad():
        ref = block(x)
        _, fold, kind = next(row for row in BLOCK_LAYERS if row[0] == layer)
        migrate(block, layer, fold, kind, s)  # the migration INT8 uses too (siglite.quant.smooth)
        out = block(x)
    worst = float((out - ref).abs().max())
    print(f"{layer}: worst |Δ| after migration {worst:.2e}")
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_alpha_is_measured_per_layer_on_an_outlier_model():
    model = small_model(outliers=True)
    records = quantize_vision(model.vision, synthetic_pixels(8, 64), "dynamic", out_dtype=torch.float32)
    assert len(records) == 4 * SMALL["num_hidden_layers"]
    for r in records:
        assert set(r["errors"]) == ({0.0} if r["layer"].endswith("fc2") else set(RECIPES["dynamic"].alphas))
        assert r["errors"][r["alpha"]] == min(r["errors"].values())  # the chosen alpha is the measured best
    smoothed = [r for r in records if r["alpha"] > 0]
    assert smoothed, "no layer found migration worth it on an outlier model"
    gain = np.mean([r["errors"][0.0] / r["errors"][r["alpha"]] for r in smoothed])
    print(f"{len(smoothed)}/{len(records)} layers migrate; their FP8 error shrinks {gain:.2f}x on average")
    assert all(isinstance(m, FP8Linear) for b in model.vision.blocks for m in (b.attn.qkv, b.attn.proj, b.mlp.fc1,
                                                                                 b.mlp.fc2))


# -- fidelity of the whole recipe -------------------------------------------------------------------------------------


def _fidelity(model, recipe: str, pixels: np.ndarray, ref_hidden: np.ndarray) -> dict:
    m = copy.deepcopy(model)
    quantize_vision(m.vision, synthetic_pixels(8, SMALL["image_size"]), recipe, out_dtype=torch.float32)
    _, hidden = TorchEngine(m, "cpu").encode_image(pixels, tokens=True)
    return cosine_summary(ref_hidden, hidden)


@pytest.mark.parametrize("outliers", [False, True], ids=["random", "outliers"])
def test_recipe_fidelity_and_naive_fp8_comparison(outliers):
    model = small_model(outliers)
    pixels = synthetic_pixels(24, SMALL["image_size"], seed=1).numpy()  # not the calibration images (seed 0)
    _, ref = TorchEngine(copy.deepcopy(model), "cpu").encode_image(pixels, tokens=True)
    rows = {name: _fidelity(model, name, pixels, ref) for name in ("dynamic", "static", "naive")}
    for name, s in rows.items():
        print(f"{'outliers' if outliers else 'random'} {name:8s} last_hidden_state cosine mean {s['mean']:.5f} "
              f"(min {s['min']:.5f} ~ max {s['max']:.5f}), 1%-low {s['p1']:.5f}")
    for name in ("dynamic", "static"):
        assert rows[name]["mean"] >= COS_MEAN and rows[name]["p1"] >= COS_P1, (name, rows[name])
    # Naive per-tensor FP8 is worse; on these models only slightly (E4M3's exponent absorbs 80x channels).
    assert rows["dynamic"]["mean"] > rows["naive"]["mean"]
    assert rows["dynamic"]["p1"] > rows["naive"]["p1"]


def test_engine_fp8_precision_emulated_on_cpu():
    """The whole engine at precision "fp8" (bf16 elsewhere) on an outlier model, against the float32 torch engine."""
    from siglite.engines.cuda import CudaEngine

    model = small_model(outliers=True)
    pixels = synthetic_pixels(16, SMALL["image_size"], seed=1).numpy()
    ref_pooled, ref = TorchEngine(copy.deepcopy(model), "cpu").encode_image(pixels, tokens=True)
    engine = CudaEngine(model, "cpu", "fp8", calib=synthetic_pixels(8, SMALL["image_size"]).numpy())
    assert engine.precision == "fp8" and engine.calibration
    assert all(m.backend == "emulate" for m in engine.model.modules() if isinstance(m, FP8Linear))
    pooled, hidden = engine.encode_image(pixels, tokens=True)
    s, sp = cosine_summary(ref, hidden), cosine_summary(ref_pooled, pooled)
    print(f"engine fp8: last_hidden_state mean {s['mean']:.5f} 1%-low {s['p1']:.5f}; pooler mean {sp['mean']:.5f}")
    assert s["mean"] >= COS_MEAN and s["p1"] >= COS_P1 and sp["mean"] >= COS_MEAN


@pytest.mark.slow
@pytest.mark.parametrize("outliers", [False, True], ids=["random", "outliers"])
def test_so400m_depth_fidelity_emulated(outliers):
    """so400m's full width and depth (27 layers, 1152 wide) at 112 px (64 tokens) so it fits a CPU run (minutes):
    FP8 error compounds with depth, so this is the check that counts for the real model. Emulated: bf16 elsewhere."""
    from siglite.engines.cuda import CudaEngine

    spec = get_spec("siglip-so400m-patch14-384")
    spec = dataclasses.replace(spec, vision={**spec.vision, "image_size": 112})
    model = random_model(spec, text=False)
    if outliers:
        inject_outliers(model)
    pixels = synthetic_pixels(8, 112, seed=1).numpy()
    ref_pooled, ref = TorchEngine(copy.deepcopy(model), "cpu").encode_image(pixels, tokens=True)
    engine = CudaEngine(model, "cpu", "fp8", calib=synthetic_pixels(8, 112).numpy())
    pooled, hidden = engine.encode_image(pixels, tokens=True)
    s, sp = cosine_summary(ref, hidden), cosine_summary(ref_pooled, pooled)
    print(f"so400m depth fp8 ({'outliers' if outliers else 'random'}): last_hidden_state mean {s['mean']:.5f} "
          f"1%-low {s['p1']:.5f}; pooled mean {sp['mean']:.5f}")
    assert s["mean"] >= COS_MEAN and s["p1"] >= COS_P1 and sp["mean"] >= COS_MEAN
