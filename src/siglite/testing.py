"""Activation-outlier injection that makes a random model look like a trained ViT to a quantizer (and residual
amplifiers that stress fp16). Random-weight models and checkpoint saving live in `siglite.checkpoints`."""

from __future__ import annotations

import torch

from .model import Siglip


@torch.no_grad()
def inject_outliers(model: Siglip, *, channels: int = 4, scale: float = 80.0, seed: int = 0) -> Siglip:
    """Give the inputs of every block's linear layers a few channels `scale`x larger than the rest, keeping the float
    function unchanged: the LayerNorm gain and shift of those channels are multiplied by `scale` and the matching
    input columns of the following qkv / fc1 weights divided by it. That is the pattern trained ViTs show
    (LayerNorm-gamma outliers, SmoothQuant / LLM.int8() papers), and it breaks per-tensor activation quantization.
    Also applied to the pooling head's MLP input. Returns the model (modified in place)."""
    gen = torch.Generator().manual_seed(seed)
    for tower in (model.vision, model.text):
        if tower is None:
            continue
        pairs = [(b.ln1, b.attn.qkv) for b in tower.blocks] + [(b.ln2, b.mlp.fc1) for b in tower.blocks]
        if getattr(tower, "head", None) is not None and hasattr(tower.head, "norm"):
            pairs.append((tower.head.norm, tower.head.mlp.fc1))
        for norm, linear in pairs:
            D = norm.weight.shape[0]
            idx = torch.randperm(D, generator=gen)[:channels]
            factor = scale * (0.6 + 0.4 * torch.rand(channels, generator=gen))  # 0.6..1.0 x scale
            norm.weight[idx] *= factor
            norm.bias[idx] *= factor
            linear.weight[:, idx] /= factor
    return model


@torch.no_grad()
def amplify_residual(model, factor: float):
    """Multiply the vision residual stream by `factor` without changing the function: everything that writes into it
    (patch embedding, position embedding, attention out-projections, fc2) is scaled, and every LayerNorm reading it
    divides the factor out again (up to eps, which becomes negligible). fp32 output is unchanged; fp16 overflows."""
    v = model.vision
    writers = [v.patch_embed] + [m for b in v.blocks for m in (b.attn.proj, b.mlp.fc2)]
    for m in writers:
        m.weight.mul_(factor)
        if m.bias is not None:  # CLIP's patch embedding has none
            m.bias.mul_(factor)
    v.pos_embed.mul_(factor)
    return model


@torch.no_grad()
def massive_channels(model, block: int = 1, channels=(3, 17), factor: float = 1e5):
    """Give the residual stream a few 'massive activation' channels (as trained ViTs have) by scaling fc2's output rows
    for those channels in one block: the residual there exceeds fp16's range. Changes the function; fp32 stays finite
    and is the reference."""
    fc2 = model.vision.blocks[block].mlp.fc2
    idx = torch.tensor(channels)
    fc2.weight[idx] *= factor
    fc2.bias[idx] = factor
    return model


def _call(tower, inputs):
    """Run a tower on `inputs`: a tensor (pixels, or token ids) or a tuple of positional tensors ((ids, mask))."""
    return tower(*inputs) if isinstance(inputs, (tuple, list)) else tower(inputs)


@torch.no_grad()
def fc2_input_ratios(model: Siglip, inputs, *, tower: str = "vision", blocks=None) -> dict[int, float]:
    """max / median |fc2 input| per block of `model.<tower>` on `inputs` (pixels for "vision"; token ids or
    (ids, mask) for "text"), over every position the tower computes. `blocks` defaults to all of them."""
    net = getattr(model, tower)
    blocks = range(len(net.blocks)) if blocks is None else blocks
    seen: dict[int, torch.Tensor] = {}
    hooks = [net.blocks[b].mlp.fc2.register_forward_hook(lambda _m, a, _o, b=b: seen.__setitem__(b, a[0].abs()))
             for b in blocks]
    try:
        _call(net, inputs)
    finally:
        for h in hooks:
            h.remove()
    return {b: float(seen[b].max() / seen[b].median()) for b in blocks}


@torch.no_grad()
def massive_fc2_inputs(model: Siglip, pixels, *, blocks=None, channels: int = 2,
                       ratio: tuple[float, float] = (450.0, 1900.0), token_quantile: float = 0.995,
                       seed: int = 0, tower: str = "vision") -> dict[int, float]:
    """Give the fc2 inputs of the middle blocks of a tower 'massive activations': in `channels` hidden channels per
    block only a few tokens fire (fc1's bias is shifted so that the top 1 - `token_quantile` of tokens on `pixels` pass
    the GELU; channels where no token stands out above that quantile are passed over), and those are scaled so that
    the largest |fc2 input| is `ratio` (drawn in the range) times the median |fc2 input| of the block; fc2's matching
    input columns are divided by the same factor. That is the pattern trained
    ViTs show (Sun et al., "Massive activations in LLMs", also in ViTs): a few tokens hundreds to thousands of times
    larger than the rest, in a few channels. Changes the function (fp32 is the reference). `blocks` defaults to the
    middle half (3..8 of 12). Returns block -> measured max/median |fc2 input| on `pixels` after all changes.

    `tower` "vision" (default; `pixels` are images) or "text": then `pixels` are the token ids, or a tuple (ids, mask)
    as the text tower takes them. Statistics run over every position the tower computes, padding included (SigLIP
    pools the last position, which is usually padding)."""
    net = getattr(model, tower)
    n = len(net.blocks)
    blocks = list(range(n // 4, n - n // 4)) if blocks is None else list(blocks)
    gen = torch.Generator().manual_seed(seed)
    seen: dict[int, torch.Tensor] = {}

    for b in blocks:  # in order: each change alters the inputs of the later blocks
        mlp = net.blocks[b].mlp
        h = mlp.fc1.register_forward_hook(lambda _m, _a, out: seen.__setitem__(-1, out.detach()))
        g = mlp.fc2.register_forward_hook(lambda _m, args, _o, b=b: seen.__setitem__(b, args[0].detach()))
        try:
            _call(net, pixels)
        finally:
            h.remove()
            g.remove()
        pre, post = seen[-1].flatten(0, -2), seen[b].flatten(0, -2)
        median = post.abs().median()
        picked = 0
        for c in torch.randperm(pre.shape[1], generator=gen).tolist():
            if picked == channels:
                break
            z = pre[:, c]
            q = torch.quantile(z, token_quantile)
            if float(z.max() - q) <= 0.01 * float(z.std()):
                # no token stands out above the quantile (e.g. identical padding positions fill its top): the
                # scaling below would be unbounded and fire at random on other inputs; draw another channel
                continue
            picked += 1
            target = float(ratio[0] + (ratio[1] - ratio[0]) * torch.rand(1, generator=gen))
            factor = target * median / (z.max() - q)
            mlp.fc1.bias[c] = (mlp.fc1.bias[c] - q) * factor
            mlp.fc1.weight[c] *= factor
            mlp.fc2.weight[:, c] /= factor
    return fc2_input_ratios(model, pixels, tower=tower, blocks=blocks)
