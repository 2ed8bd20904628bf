"""Which linear layers of a SigLIP tower INT8 quantizes, and SmoothQuant outlier migration into their weights.

SmoothQuant (Xiao et al. 2023, https://arxiv.org/abs/2211.10438, eq. 4): divide input channel j of a linear layer
by ``s_j = amax|X_j|^a / amax|W[:, j]|^(1 - a)`` and multiply weight column j by ``s_j``; the float function is
unchanged, and activation outliers (a few channels 50-100x larger, as LayerNorm gains make them in trained ViTs)
move into the weights, where per-channel weight scales absorb them. The division is folded where the channels are
produced, so inference pays nothing for it:

* into a LayerNorm's gain and shift (``ln1`` -> ``attn.qkv``, ``ln2`` -> ``mlp.fc1``, the pooling head's
  ``norm`` -> ``mlp.fc1``, the text tower's final ``norm`` -> ``head``);
* into the V rows of the projection that makes the attention values (``attn.qkv`` -> ``attn.proj``, the head's
  ``kv`` -> ``proj``): attention mixes tokens, not channels, so it is linear in V channel by channel.

``mlp.fc2`` (its input is GELU's output) and the head's ``kv`` (its input is ``last_hidden_state``, an output of
the graph) have nothing to fold into and are quantized without migration. The head's ``q`` acts on the learned
probe alone (a constant) and is never quantized.

``mlp.fc2``'s input channels are ``mlp.fc1``'s output rows through an elementwise activation, so they cannot be
scaled (GELU is not homogeneous) but can be reordered: permuting fc1's rows and fc2's columns alike leaves the
function unchanged (`move_channels_last`). The INT8 recipe uses that to put a few outlier channels at the end of
the input, where its graph computes them in float32 (`REORDERABLE`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

# (layer, fold target, kind) relative to a block; kind "norm": divide a LayerNorm's gain and shift,
# "v_rows": divide the last D output rows (the V part) of a q/k/v projection.
BLOCK_LAYERS = (
    ("attn.qkv", "ln1", "norm"),
    ("attn.proj", "attn.qkv", "v_rows"),
    ("mlp.fc1", "ln2", "norm"),
    ("mlp.fc2", None, None),
)
# The same, relative to a tower, for the layers after the blocks.
HEAD_LAYERS = {
    "vision": (("head.kv", None, None), ("head.proj", "head.kv", "v_rows"), ("head.mlp.fc1", "head.norm", "norm"),
               ("head.mlp.fc2", None, None)),
    "text": (("head", "norm", "norm"),),
}
# Projections after pooling (CLIP's visual_projection reads the post-normed class token); nn.Identity elsewhere.
PROJ_LAYERS = {"vision": (("proj", "norm", "norm"),), "text": ()}
MIN_SCALE, MAX_SCALE = 1e-4, 1e4
# layer -> the linear layer whose output rows are its input channels through an elementwise activation (relative
# names, as in BLOCK_LAYERS / HEAD_LAYERS): its input channels can be reordered, both weights permuted alike.
REORDERABLE = {"mlp.fc2": "mlp.fc1"}


def tower_layers(model, tower: str) -> list[tuple[str, str | None, str | None]]:
    """Quantizable linear layers of one tower as (name, fold target, kind), names relative to the model
    (``vision.blocks.0.attn.qkv``), in execution order."""
    module = getattr(model, tower)
    if module is None:
        return []
    out = []
    for i in range(len(module.blocks)):
        prefix = f"{tower}.blocks.{i}."
        out += [(prefix + n, prefix + t if t else None, k) for n, t, k in BLOCK_LAYERS]
    if getattr(module, "head", None) is not None:
        heads = HEAD_LAYERS[tower] + PROJ_LAYERS[tower]
        out += [(f"{tower}.{n}", f"{tower}.{t}" if t else None, k) for n, t, k in heads
                if isinstance(_find(module, n), nn.Linear)]  # a family's absent parts (CLIP has no MAP head)
    return out


def _find(module: nn.Module, name: str) -> nn.Module | None:
    try:
        return module.get_submodule(name)
    except AttributeError:
        return None
def block_layers(tower: nn.Module) -> list[tuple[str, str | None, str | None]]:
    """The quantizable linear layers of a tower's transformer blocks only, names relative to the tower
    (``blocks.0.attn.qkv``), in execution order (the FP8 recipe quantizes these)."""
    return [(f"blocks.{i}.{n}", f"blocks.{i}.{t}" if t else None, k) for i in range(len(tower.blocks))
            for n, t, k in BLOCK_LAYERS]


def channel_producer(layer: str) -> str | None:
    """The full name of the linear layer whose output rows `layer`'s input channels are (``vision.blocks.3.mlp.fc1``
    for ``vision.blocks.3.mlp.fc2``, also in the heads), or None where they cannot be reordered."""
    for rel, producer in REORDERABLE.items():
        if layer.endswith("." + rel):
            return layer[: -len(rel)] + producer
    return None


@torch.no_grad()
def move_channels_last(model: nn.Module, layer: str, producer: str, channels: torch.Tensor) -> torch.Tensor:
    """Reorder `layer`'s input channels (the output rows of `producer`) so that `channels` come last, in the given
    order: the model computes the same function. Returns the permutation applied (new position -> old channel)."""
    linear, prod = model.get_submodule(layer), model.get_submodule(producer)
    K = linear.weight.shape[1]
    chosen = torch.zeros(K, dtype=torch.bool)
    chosen[channels.cpu()] = True
    perm = torch.cat([torch.arange(K)[~chosen], channels.cpu()]).to(linear.weight.device)
    linear.weight.copy_(linear.weight[:, perm])
    prod.weight.copy_(prod.weight[perm])
    if prod.bias is not None:
        prod.bias.copy_(prod.bias[perm])
    return perm


def smoothing_factors(act_amax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """(K,) factors s_j = amax|X_j|^a / amax|W[:, j]|^(1-a) for a (N, K) weight, clamped away from 0 and inf."""
    w_amax = weight.detach().abs().float().amax(dim=0).clamp_min(1e-5)
    s = act_amax.float().clamp_min(1e-5).pow(alpha) / w_amax.pow(1 - alpha)
    return s.clamp(MIN_SCALE, MAX_SCALE)


@torch.no_grad()
def migrate(model: nn.Module, layer: str, target: str, kind: str, s: torch.Tensor) -> None:
    """Divide the input channels of `layer` by `s` where `target` produces them, and multiply the layer's weight
    columns by `s`: the model computes the same function with the input outliers moved into the weight."""
    linear, fold = model.get_submodule(layer), model.get_submodule(target)
    s = s.to(linear.weight.device, linear.weight.dtype)
    if kind == "norm":
        fold.weight.div_(s)
        fold.bias.div_(s)
    elif kind == "v_rows":
        D = s.numel()
        fold.weight[-D:].div_(s[:, None])
        fold.bias[-D:].div_(s)
    else:
        raise ValueError(f"{layer}: unknown fold kind {kind!r}")
    linear.weight.mul_(s)


def search_alpha(act_amax: torch.Tensor, weight: torch.Tensor, alphas: Sequence[float],
                 error: Callable[[torch.Tensor], float]) -> tuple[float, torch.Tensor, dict]:
    """Measure each migration strength and keep the best: alpha 0 (no migration) first, then the non-zero `alphas`.

    Args:
        act_amax: (K,) per-channel input amax.
        weight: (N, K) weight.
        alphas: strengths to try besides 0.
        error: factors s (K,) -> the recipe's error of the layer's quantized product with input / s, weight * s.

    Returns:
        (best alpha, its factors (ones for 0), {alpha: error}).
    """
    errors, best = {}, (math.inf, 0.0, torch.ones_like(act_amax))
    for alpha in (0.0, *[a for a in alphas if a]):
        s = smoothing_factors(act_amax, weight, alpha) if alpha else torch.ones_like(act_amax)
        errors[alpha] = err = error(s)
        if err < best[0]:
            best = (err, alpha, s)
    return best[1], best[2], errors
