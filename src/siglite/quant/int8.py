"""INT8 post-training quantization of SigLIP for CPU inference: recipe, calibration, a measured sensitivity pass.

The recipe (`RECIPES["siglite"]`, the default) quantizes the matmuls of every linear layer (`smooth.tower_layers`)
and keeps everything else in float32 (patch embedding, LayerNorms, attention's softmax and its two activation
matmuls, GELU, residual adds, the pooling head's probe):

* weights: symmetric 8-bit (+-127), one scale per output channel (stored signed, or offset by 128 where the CPU's
  u8*s8 kernels can saturate: `isa`);
* activations: asymmetric UINT8, one scale per tensor computed at run time from its min/max (ONNX
  ``DynamicQuantizeLinear``; ONNX Runtime fuses it with the integer matmul into ``DynamicQuantizeMatMul``);
* outliers: SmoothQuant migration (`smooth`), strength chosen per layer among `Recipe.alphas` by the measured
  error of that layer's INT8 product on calibration activations (alpha 0 = no migration);
* massive activations (a few tokens hundreds of times larger than the rest, in a few channels of ``mlp.fc2``'s
  input, which has nothing to migrate into): decomposition as in LLM.int8() (Dettmers et al. 2022), with the
  channels chosen once from calibration: those channels are moved to the end of the input (fc1's rows and fc2's
  columns permuted alike) and their product is computed in float32 beside the INT8 product of the others, so the
  dynamic range of the INT8 part no longer spans the massive values; those layers also scale their INT8 input per
  token, so that a massive value calibration never showed (another channel, another token) costs only its own
  token's precision. The producer (fc1) computes the massive channels in float32 too. The count
  (`Recipe.float_channels`) is the fewest whose measured error is within `FLOAT_SLICE_GAIN` of the best count tried:
  none on layers without them;
* sensitivity: each layer is quantized alone and the towers' output cosine is measured on held-out calibration
  inputs; if the fully quantized model misses the fidelity target, the most damaging layers go back to float32,
  one at a time, until it meets it.

Every measurement runs a float32 simulation of the exported graph's integer arithmetic (`SimLinear`): same scales,
same round-half-to-even, same saturation. The exported model is then measured again in the runtime that serves it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..metrics import cosine_summary
from .calib import VisionInputs
from .isa import WEIGHT_MAX
from .smooth import channel_producer, migrate, move_channels_last, search_alpha, tower_layers
from .stats import InputStats, collect

log = logging.getLogger(__name__)

SAMPLE_ROWS = 256  # calibration rows kept per layer for the alpha and float-channel searches
# output channels those searches measure (per-channel weight scales make each output channel's error independent of
# the others, so a fixed random subset estimates the layer's error without quantizing the whole matrix each time)
SAMPLE_OUTPUTS = 256
BATCH = 8  # images (or texts) per forward pass, as the benchmark runs them


@dataclass(frozen=True)
class Recipe:
    """How to quantize.

    Attributes:
        weights: "channel" (one scale per output channel) or "tensor" (one per matrix).
        activations: "dynamic" (per-tensor min/max at run time) or "static" (per-tensor min/max from calibration).
        weight_max: largest weight magnitude (127: 8 bits). Exact on every CPU: where u8*s8 pair sums can saturate
            (AVX2 without VNNI) the graph stores the weights offset by 128 for u8*u8 kernels (`isa`).
        alphas: SmoothQuant strengths tried per layer (empty: no migration).
        float_channels: how many input channels (largest calibration amax first) a reorderable layer
            (`smooth.REORDERABLE`: ``mlp.fc2``) may compute in float32 beside its INT8 product (empty: none).
        sensitivity: run the per-layer sensitivity pass and fall back to float32 where needed.
    """

    weights: str = "channel"
    activations: str = "dynamic"
    weight_max: int = WEIGHT_MAX
    alphas: tuple[float, ...] = (0.0, 0.3, 0.5, 0.65, 0.8)
    float_channels: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    sensitivity: bool = True


RECIPES = {
    "siglite": Recipe(),
    # what ONNX Runtime's quantize_dynamic does by default: per-tensor INT8 weights, dynamic activations
    "dynamic": Recipe(weights="tensor", alphas=(), float_channels=(), sensitivity=False),
    # textbook static PTQ: one calibrated range per activation tensor, one scale per weight matrix, nothing kept
    "naive": Recipe(weights="tensor", activations="static", alphas=(), float_channels=(),
                    sensitivity=False),
}
# The fewest float32 input channels whose error is within this factor of the best count tried: massive activations
# cut the error by orders of magnitude when their channels go to float32; elsewhere more channels gain < this and
# none are used (a slice costs a copy of the input).
FLOAT_SLICE_GAIN = 3.0


@dataclass(frozen=True)
class FidelityTarget:
    """The fidelity the sensitivity pass keeps layers in float32 for: every tracked output (vision
    last_hidden_state and pooler_output, text pooler_output) must reach a per-sample cosine `mean` and a
    1st-percentile (`low`) on the held-out calibration inputs. The defaults sit above the issue's bar
    (0.995 / 0.99) so that unseen inputs keep clear of it."""

    mean: float = 0.998
    low: float = 0.995

    def met(self, fid: dict[str, dict]) -> bool:
        return all(s["mean"] >= self.mean and s["p1"] >= self.low for s in fid.values())

    def damage(self, fid: dict[str, dict]) -> float:
        """How far the worst output is from identity, scaled so that mean and 1%-low count against their bar."""
        return max(max((1 - s["mean"]) / (1 - self.mean), (1 - s["p1"]) / (1 - self.low)) for s in fid.values())


# -- integer arithmetic, simulated in float32 -------------------------------------------------------------------------


def weight_scales(weight: torch.Tensor, granularity: str, weight_max: int) -> torch.Tensor:
    """(N, K) weight -> (N,) scales (the same value N times for "tensor"), amax / weight_max."""
    w = weight.detach().float().abs()
    amax = w.amax(dim=1) if granularity == "channel" else w.amax().expand(w.shape[0])
    return torch.where(amax > 0, amax / weight_max, torch.ones_like(amax)).contiguous()


def quantize_weight(weight: torch.Tensor, granularity: str, weight_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float -> (N, K) int8 and its (N,) float32 scales (symmetric, zero point 0)."""
    s = weight_scales(weight, granularity, weight_max)
    q = torch.clamp(torch.round(weight.detach().float() / s[:, None]), -weight_max, weight_max)
    return q.to(torch.int8), s


def act_qparams(lo: torch.Tensor | float, hi: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """UINT8 scale and zero point of a range widened to include 0 (ONNX DynamicQuantizeLinear's definition)."""
    lo = torch.clamp(torch.as_tensor(lo, dtype=torch.float32), max=0)
    hi = torch.clamp(torch.as_tensor(hi, dtype=torch.float32), min=0)
    scale = (hi - lo) / 255
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero_point = torch.clamp(torch.round(-lo / scale), 0, 255)
    return scale, zero_point


def fake_quant_rows(x: torch.Tensor) -> torch.Tensor:
    """What per-token (per-row) symmetric quantization turns `x` into: each row over its own max |x| in 127 steps
    (UINT8 around a fixed zero point 128, as `onnx_int8` writes it: ONNX Runtime's MatMulInteger takes one zero
    point per tensor only)."""
    scale = (x.abs().amax(dim=-1, keepdim=True) / 127).clamp_min(1e-30)
    return torch.clamp(torch.round(x / scale), -127, 127) * scale


def fake_quant_act(x: torch.Tensor, lo=None, hi=None) -> torch.Tensor:
    """What UINT8 quantization turns `x` into: over its own min/max (dynamic) or a calibrated [lo, hi] (static)."""
    scale, zp = act_qparams(x.min() if lo is None else lo, x.max() if hi is None else hi)
    return (torch.clamp(torch.round(x / scale) + zp, 0, 255) - zp) * scale


@dataclass(frozen=True)
class Int8Form:
    """How one linear layer computes in INT8, beside its weights (what `SimLinear` simulates and
    `onnx_int8.quantize_graph` writes).

    Attributes:
        act_range: static activations only: the calibrated (lo, hi) of its input.
        float_channels: its last k input channels computed in float32 beside the INT8 product (the outlier slice).
        float_rows: its last r outputs computed wholly in float32 (the channels a later layer's slice takes).
        per_token: its input quantized with one scale per token (row) rather than per tensor.
    """

    act_range: tuple[float, float] | None = None
    float_channels: int = 0
    float_rows: int = 0
    per_token: bool = False


class SimLinear(nn.Module):
    """A linear layer that computes either in float32 or as its INT8 form (`Int8Form`) in the exported graph does
    (`onnx_int8`): the first K - `float_channels` input channels as an INT8 product, the last `float_channels` in
    float32; the last `float_rows` outputs wholly in float32."""

    def __init__(self, linear: nn.Linear, recipe: Recipe, form: Int8Form = Int8Form()):
        super().__init__()
        self.linear = linear
        self.per_token = form.per_token
        self.rows = linear.weight.shape[0] - form.float_rows
        self.split = linear.weight.shape[1] - form.float_channels
        q, s = quantize_weight(linear.weight[:self.rows, :self.split], recipe.weights, recipe.weight_max)
        self.register_buffer("w_deq", q.float() * s[:, None])
        self.act_range = form.act_range if recipe.activations == "static" else None
        self.quantized = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.quantized:
            return self.linear(x)
        w, bias = self.linear.weight, self.linear.bias
        lo, hi = self.act_range if self.act_range is not None else (None, None)
        xi = x[..., :self.split]
        out = F.linear(fake_quant_rows(xi) if self.per_token else fake_quant_act(xi, lo, hi), self.w_deq)
        if self.split < x.shape[-1]:
            out = out + F.linear(x[..., self.split:], w[:self.rows, self.split:])
        if self.rows < w.shape[0]:
            out = torch.cat([out, F.linear(x, w[self.rows:])], dim=-1)
        return out if bias is None else out + bias


# -- migration strength -----------------------------------------------------------------------------------------------


def layer_error(x: torch.Tensor, weight: torch.Tensor, recipe: Recipe, lo=None, hi=None,
                ref: torch.Tensor | None = None) -> float:
    """Relative squared error of one layer's INT8 product x @ W.T against float32 (`ref`, when known)."""
    ref = x @ weight.t() if ref is None else ref
    q, s = quantize_weight(weight, recipe.weights, recipe.weight_max)
    out = fake_quant_act(x, lo, hi) @ (q.float() * s[:, None]).t()
    return float((out - ref).pow(2).sum() / ref.pow(2).sum().clamp_min(1e-30))


def choose_alpha(st: InputStats, weight: torch.Tensor, recipe: Recipe) -> tuple[float, torch.Tensor, dict]:
    """Try each migration strength on the sampled rows; returns (best alpha, its factors, error per alpha)."""
    x, w = st.sample(), weight.detach().float()
    ws = _output_sample(w, recipe)
    ref = x @ ws.t()  # migration leaves the float product unchanged
    static = recipe.activations == "static"

    def error(s: torch.Tensor) -> float:
        lo, hi = ((st.lo / s).min(), (st.hi / s).max()) if static else (None, None)
        return layer_error(x / s, ws * s, recipe, lo, hi, ref)

    return search_alpha(st.amax, w, recipe.alphas, error)


def choose_float_channels(st: InputStats, weight: torch.Tensor, recipe: Recipe) -> tuple[torch.Tensor, dict]:
    """Which input channels (largest calibration amax first) to compute in float32 beside the INT8 product.

    Each count in `recipe.float_channels` is measured on the sampled rows, the INT8 part quantized over the range
    of its channels on the whole calibration set (what a batch holding a massive token spans at run time, even if
    the sample holds none). Returns (the chosen channels, possibly none; {count: relative error})."""
    x, w = st.sample(), _output_sample(weight.detach().float(), recipe)
    ref = x @ w.t()
    order = st.amax.argsort(descending=True).to(x.device)
    errors, picks = {}, {}
    for k in (0, *recipe.float_channels):
        if k >= x.shape[1] // 2:
            break
        keep = torch.ones(x.shape[1], dtype=torch.bool, device=x.device)
        keep[order[:k]] = False
        lo, hi = st.lo.to(x.device)[keep].min(), st.hi.to(x.device)[keep].max()
        main = ref - x[:, ~keep] @ w[:, ~keep].t()  # what the INT8 part must produce
        # relative to the whole product, so that counts compare
        errors[k] = layer_error(x[:, keep], w[:, keep], recipe, lo, hi, main) * float(
            main.pow(2).sum() / ref.pow(2).sum().clamp_min(1e-30))
        picks[k] = order[:k]
    # more float channels always help a little (a smaller range for the rest); massive ones help by orders of
    # magnitude: take the fewest within FLOAT_SLICE_GAIN of the best count tried
    best = min(errors.values())
    k = min(k for k, e in errors.items() if e <= FLOAT_SLICE_GAIN * best)
    return picks[k], errors


def _output_sample(weight: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """`SAMPLE_OUTPUTS` fixed random rows (output channels) of a (N, K) weight with per-channel scales; all of it
    with one scale per matrix (whose scale depends on every row)."""
    if recipe.weights != "channel" or weight.shape[0] <= SAMPLE_OUTPUTS:
        return weight
    idx = torch.randperm(weight.shape[0], generator=torch.Generator().manual_seed(0))[:SAMPLE_OUTPUTS]
    return weight[idx.to(weight.device)]


# -- fidelity ---------------------------------------------------------------------------------------------------------


class Probe:
    """The model's outputs on the held-out calibration inputs, and how far another run of it lands from them.

    `images`: a `calib.VisionInputs` (NaFlex patches with their grids) or a plain (N, 3, H, W) pixel tensor."""

    def __init__(self, model, images, ids: torch.Tensor | None, mask: torch.Tensor | None):
        self.images, self.ids, self.mask = VisionInputs.of(images), ids, mask
        self.reference = self.outputs(model)

    @torch.inference_mode()
    def outputs(self, model, towers: tuple[str, ...] = ("vision", "text")) -> dict[str, torch.Tensor]:
        out: dict[str, list] = {}
        if self.images is not None and model.vision is not None and "vision" in towers:
            for batch in self.images.batches(BATCH):
                hidden, pooled = batch.forward(model.vision)
                out.setdefault("vision_hidden", []).append(batch.real_tokens(hidden))
                if pooled is not None:
                    out.setdefault("vision_pooled", []).append(pooled)
        if self.ids is not None and model.text is not None and "text" in towers:
            for i in range(0, len(self.ids), BATCH):
                mask = self.mask[i:i + BATCH] if self.mask is not None else None
                out.setdefault("text_pooled", []).append(model.text(self.ids[i:i + BATCH], mask)[1])
        return {k: torch.cat(v) for k, v in out.items()}

    def fidelity(self, model, towers: tuple[str, ...] = ("vision", "text")) -> dict[str, dict]:
        """Cosine summaries of the outputs of `towers` (the others are not run)."""
        got = self.outputs(model, towers)
        return {k: cosine_summary(self.reference[k], got[k]) for k in got}

    @torch.inference_mode()
    def block_inputs(self, model) -> list[tuple]:
        """Per vision batch, (the batch, its attention key mask, the input of every block and the last block's output
        (L + 1 tensors)), as `model` runs now: the prefix that `fidelity_from` does not re-run."""
        out = []
        for batch in self.images.batches(BATCH):
            x, mask = batch.embed(model.vision)
            xs = [x]
            for block in model.vision.blocks:
                x = block(x, mask)
                xs.append(x)
            out.append((batch, mask, xs))
        return out

    @torch.inference_mode()
    def fidelity_from(self, model, start: int, cached: list[tuple]) -> dict[str, dict]:
        """`fidelity(model, ("vision",))` for a model that differs from the one `cached` was taken from only in
        block `start` or later (`len(blocks)`: the head): the blocks before it are not run again."""
        got: dict[str, list] = {}
        for batch, mask, xs in cached:
            hidden, pooled = model.vision.forward_from(xs[start], start, mask)
            got.setdefault("vision_hidden", []).append(batch.real_tokens(hidden))
            if pooled is not None:
                got.setdefault("vision_pooled", []).append(pooled)
        return {k: cosine_summary(self.reference[k], torch.cat(v)) for k, v in got.items()}


# -- the plan ---------------------------------------------------------------------------------------------------------


@dataclass
class LayerPlan:
    name: str
    quantized: bool
    alpha: float
    fold: str | None
    errors: dict  # alpha -> relative error of the layer's INT8 product on calibration rows
    act_range: tuple[float, float] | None  # static activations: calibrated (lo, hi) after migration
    float_channels: int = 0  # input channels (moved last) computed in float32 beside the INT8 product
    float_rows: int = 0  # output channels (last) computed in float32: those a later layer's float channels are
    per_token: bool = False  # activations quantized per token (row) rather than per tensor
    channel_errors: dict | None = None  # float channel count -> relative error of the layer's product
    sensitivity: dict | None = None  # output fidelity with this layer alone quantized
    reason: str = ""

    @property
    def form(self) -> Int8Form:
        return Int8Form(self.act_range, self.float_channels, self.float_rows, self.per_token)


@dataclass
class Plan:
    """What `plan` decided: the migrated float model, and per layer whether and how it is quantized."""

    model: nn.Module  # float32, outliers migrated (same function as the source model)
    recipe: Recipe
    target: FidelityTarget
    layers: list[LayerPlan]
    fidelity: dict  # simulated: {"all_quantized": ..., "final": ...}
    timings: dict
    reference: dict = dataclasses.field(default_factory=dict)  # float32 outputs on the held-out inputs (`Probe`)
    probe: Probe | None = None  # the held-out inputs and those outputs, for `refine`

    def quantized(self) -> list[str]:
        return [lp.name for lp in self.layers if lp.quantized]

    def to_dict(self) -> dict:
        return {"recipe": asdict(self.recipe), "target": asdict(self.target),
                "layers": [asdict(lp) for lp in self.layers], "fidelity_simulated": self.fidelity,
                "timings_s": self.timings}


def _tokenize(tokenizer, texts: list[str]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if tokenizer is None or not texts:
        return None, None
    ids, mask = tokenizer(texts)
    return torch.from_numpy(ids), (torch.from_numpy(mask) if mask is not None else None)


@torch.no_grad()
def plan(model: nn.Module, calibration, tokenizer=None, recipe: Recipe | str = "siglite",
         target: FidelityTarget | None = None, *, sensitivity_samples: int = 0, simulate: bool = True,
         progress=None) -> Plan:
    """Calibrate, migrate outliers and choose which layers run in INT8.

    Args:
        model: a float32 `Siglip` (not modified; the plan holds a migrated copy).
        calibration: a `calib.Calibration` (fit and held-out pixels and texts).
        tokenizer: the checkpoint's `TextTokenizer`, to calibrate the text tower.
        recipe: a `Recipe` or a key of `RECIPES`.
        target: fidelity the sensitivity pass keeps layers in float32 for.
        sensitivity_samples: held-out images (and texts) per sensitivity measurement; 0 (the default) skips the
            per-layer pass unless the fully quantized model misses the target.
        simulate: measure the fully quantized model (simulated) and fall back where it misses the target
            (`refine`). False stops after calibration and migration, every layer planned in INT8, so that the
            caller can measure the written model in its runtime first and `refine` only if that misses the target
            (ignored when `sensitivity_samples` asks for the per-layer pass).
        progress: optional callable(str) for progress lines.
    """
    recipe = RECIPES[recipe] if isinstance(recipe, str) else recipe
    target = target or FidelityTarget()
    say = progress or log.info
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    model = copy.deepcopy(model).float().eval()
    layers = tower_layers(model, "vision") + tower_layers(model, "text")
    fit_images = calibration.fit_images  # VisionInputs: pixels, or NaFlex patches + grids
    fit_ids, fit_mask = _tokenize(tokenizer, calibration.fit_texts)

    def run_fit():
        if fit_images is not None and model.vision is not None:
            for batch in fit_images.batches(BATCH):
                batch.forward(model.vision)
        if fit_ids is not None and model.text is not None:
            for i in range(0, len(fit_ids), BATCH):
                model.text(fit_ids[i:i + BATCH], fit_mask[i:i + BATCH] if fit_mask is not None else None)

    say(f"calibrating {len(layers)} linear layers on {calibration.describe()}")
    stats = collect({n: model.get_submodule(n) for n, _, _ in layers}, run_fit, sample_rows=SAMPLE_ROWS,
                    per_batch=SAMPLE_ROWS // 8)
    times["statistics"] = time.perf_counter() - t0

    # Migrate in execution order; a fold into qkv's V rows scales whole output rows, which per-channel weight
    # scales absorb exactly, so later folds do not undo earlier choices.
    t1 = time.perf_counter()
    plans = []
    with _one_thread():  # many small ops: a parallel region each, whose barriers stall when the CPU is shared
        _migrate_all(model, layers, stats, recipe, plans)
    times["migration"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    check_images = calibration.check_images  # VisionInputs: pixels, or NaFlex patches + grids
    check_ids, check_mask = _tokenize(tokenizer, calibration.check_texts)
    probe = Probe(model, check_images, check_ids, check_mask)
    times["reference"] = time.perf_counter() - t2
    p = Plan(model, recipe, target, plans, {}, times, probe.reference, probe)
    if simulate or (recipe.sensitivity and sensitivity_samples):
        refine(p, sensitivity_samples=sensitivity_samples, progress=say)
    return p


@torch.no_grad()
def refine(p: Plan, *, sensitivity_samples: int = 0, progress=None) -> Plan:
    """Simulate `p` with every planned layer in INT8 on the held-out inputs; where it misses the target (and the
    recipe allows), measure each layer's damage alone and return the most damaging ones to float32, one at a time,
    until the target is met. Updates `p` in place (layers, fidelity, timings) and returns it."""
    say = progress or log.info
    recipe, target, probe, model, plans = p.recipe, p.target, p.probe, p.model, p.layers
    times = p.timings
    t2 = time.perf_counter()
    # Simulate: every layer as its INT8 form, switchable one by one.
    sim = copy.deepcopy(model)
    wrappers = {}
    for lp in plans:
        lp.quantized, lp.reason = True, "int8"
        parent, _, attr = lp.name.rpartition(".")
        holder = sim.get_submodule(parent)
        wrappers[lp.name] = SimLinear(getattr(holder, attr), recipe, lp.form)
        setattr(holder, attr, wrappers[lp.name])
    all_q = probe.fidelity(sim)
    say(f"all layers INT8 (simulated): {_brief(all_q)}")
    fidelity = {"all_quantized": all_q}

    need_fallback = recipe.sensitivity and not target.met(all_q)
    if recipe.sensitivity and (sensitivity_samples or need_fallback):
        n = sensitivity_samples or 4
        cut = (lambda t: t[:n] if t is not None else None)
        small = Probe(model, cut(probe.images), cut(probe.ids), cut(probe.mask))
        for w in wrappers.values():
            w.quantized = False
        # float prefix, computed once: a vision layer in block i changes nothing before block i
        cached = small.block_inputs(sim) if small.images is not None and sim.vision is not None else None
        for lp in plans:  # a layer changes only its own tower's outputs: run that tower alone
            wrappers[lp.name].quantized = True
            start = _vision_start(lp.name, sim) if cached is not None else None
            lp.sensitivity = (small.fidelity_from(sim, start, cached) if start is not None
                              else small.fidelity(sim, (lp.name.partition(".")[0],)))
            wrappers[lp.name].quantized = False
        for w in wrappers.values():
            w.quantized = True
        say("sensitivity: most damaging alone: " + ", ".join(
            f"{lp.name} {target.damage(lp.sensitivity):.2f}"
            for lp in sorted(plans, key=lambda p: -target.damage(p.sensitivity))[:3]))
    times["sensitivity"] = time.perf_counter() - t2

    t3 = time.perf_counter()
    final = all_q
    if need_fallback:
        order = sorted(plans, key=lambda p: -target.damage(p.sensitivity))
        for lp in order:
            wrappers[lp.name].quantized = False
            lp.quantized = False
            lp.reason = "float32: among the most damaging layers when quantized alone; needed to meet the target"
            final = probe.fidelity(sim)
            say(f"{lp.name} -> float32: {_brief(final)}")
            if target.met(final):
                break
    fidelity["final"] = final
    times["fallback"] = time.perf_counter() - t3
    p.fidelity = fidelity
    return p


def _migrate_all(model, layers, stats, recipe: Recipe, plans: list) -> None:
    """Per layer, in execution order: choose and apply the migration strength and the static range; append its
    `LayerPlan` to `plans`. The float channels (massive activations) are chosen first, from the statistics of the
    unmigrated model (migration keeps every layer's input, so they hold after it), so that their producer's
    migration strength is measured on the rows that stay INT8 (a massive row would skew its smoothing factors)."""
    channels: dict[str, int] = {}  # reorderable layer -> float32 input channels
    rows: dict[str, int] = {}  # its producer -> as many float32 output rows
    errors_by_count: dict[str, dict] = {}  # reorderable layer -> {float channel count: error}
    if recipe.float_channels:
        for name, _, _ in layers:
            producer = channel_producer(name)
            if producer is None:
                continue
            st = stats[name]
            chosen, errors_by_count[name] = choose_float_channels(st, model.get_submodule(name).weight, recipe)
            if len(chosen):
                st.permute(move_channels_last(model, name, producer, chosen))
                channels[name] = rows[producer] = len(chosen)
    for name, fold, kind in layers:
        st = stats[name]
        linear = model.get_submodule(name)
        int8_rows = linear.weight.shape[0] - rows.get(name, 0)
        alpha, s, errors = choose_alpha(st, linear.weight[:int8_rows], recipe if fold else _no_migration(recipe))
        if alpha:
            migrate(model, name, fold, kind, s)
        st.scale(s)  # the layer's input after migration
        lp = LayerPlan(name, True, alpha, fold, {str(a): e for a, e in errors.items()}, None)
        lp.float_rows = rows.get(name, 0)
        if name in errors_by_count:
            lp.channel_errors = {str(k): e for k, e in errors_by_count[name].items()}
        if name in channels:
            lp.float_channels = channels[name]
            # a layer that hosts massive activations may meet ones calibration never showed (other channels,
            # other tokens): one scale per token keeps such a token from taking every other token's precision
            lp.per_token = recipe.activations == "dynamic"
        if recipe.activations == "static":
            split = len(st.lo) - lp.float_channels
            lp.act_range = (float(st.lo[:split].min()), float(st.hi[:split].max()))
        lp.reason = "int8"
        plans.append(lp)


@contextlib.contextmanager
def _one_thread():
    """torch on one thread for the duration (restored after)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _vision_start(name: str, model) -> int | None:
    """The first vision block a layer's change reaches: i for "vision.blocks.i.*", len(blocks) for the head's
    layers and the projection after them; None for the text tower."""
    parts = name.split(".")
    if parts[0] != "vision":
        return None
    if parts[1] == "blocks":
        return int(parts[2])
    if parts[1] in ("head", "proj"):
        return len(model.vision.blocks)
    return None


def _no_migration(recipe: Recipe) -> Recipe:
    return dataclasses.replace(recipe, alphas=())


def _brief(fid: dict[str, dict]) -> str:
    return ", ".join(f"{k} cos mean {v['mean']:.5f} p1 {v['p1']:.5f}" for k, v in fid.items())
