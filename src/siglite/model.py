"""The whole two-tower forward pass (SigLIP and CLIP) in one file: vision tower, text tower, pooling, logits.

Ported from Hugging Face transformers `models/siglip/modeling_siglip.py` and `models/clip/modeling_clip.py` (v5.24)
and big_vision `big_vision/models/vit.py` / `two_towers.py`. Numerics follow transformers exactly; the layout is
ours: q/k/v are one fused `nn.Linear` (one GEMM instead of three), attention is `F.scaled_dot_product_attention`.
Every matrix multiply is a plain `nn.Linear`, so quantizers can find and replace them.

The families differ by the fields of `config.VisionConfig` / `config.TextConfig` (class token, pre-norm, where the
final norm applies, causal text, pooling, projection, activation); a part a family lacks is `None` or
`nn.Identity`, as in timm's `VisionTransformer` and open_clip's towers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import LOGITS, TextConfig, TowerConfig, VisionConfig

__all__ = ["Siglip", "VisionTower", "TextTower", "Block", "TowerConfig", "VisionConfig", "TextConfig",
           "sigmoid_logits", "softmax_logits", "pair_logits"]

ACTIVATIONS = {
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),  # OpenAI CLIP (transformers QuickGELUActivation)
}


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, D = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (3, B, H, T, Dh)
        # mask: (B, 1, 1, T) padding and/or (1|B, 1, T, T) causal, bool, True = attend; scale Dh**-0.5 as transformers
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask)  # (B, H, T, Dh)
        return self.proj(out.transpose(1, 2).reshape(B, T, D))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = ACTIVATIONS[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (SiglipEncoderLayer, CLIPEncoderLayer: the same layout)."""

    def __init__(self, cfg: TowerConfig):
        super().__init__()
        D = cfg.hidden_size
        self.ln1 = nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        self.attn = Attention(D, cfg.num_attention_heads)
        self.ln2 = nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        self.mlp = MLP(D, cfg.intermediate_size, cfg.hidden_act)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), mask)
        return x + self.mlp(self.ln2(x))


# -- NaFlex (variable resolution) helpers ------------------------------------------------------------------------


def patch_mask(spatial_shapes: torch.Tensor, length: int) -> torch.Tensor:
    """(B, 2) (rows, cols) patch grids -> (B, length) bool, True for an image's rows*cols patches (then padding).

    The same mask transformers' Siglip2ImageProcessor returns as `pixel_attention_mask` (patches first, padding last).
    """
    positions = torch.arange(length, device=spatial_shapes.device)
    return positions[None, :] < spatial_shapes.prod(-1)[:, None]


def resize_pos_embed(pos_embed: torch.Tensor, spatial_shapes: torch.Tensor, length: int) -> torch.Tensor:
    """Resize a square (1, G*G, D) position grid to each image's (rows, cols) grid -> (B, length, D), row-major,
    the padding positions taking position (0, 0) (any value would do: they are masked).

    Equal to `F.interpolate(grid, size=(rows, cols), mode="bilinear", align_corners=False, antialias=True)` per image,
    written as the separable filter weights so that one batched matmul serves images of different shapes (and the
    graph traces with `spatial_shapes` as an input). Port of transformers 5.24
    `models/siglip2/modeling_siglip2.py` `Siglip2VisionEmbeddings.resize_positional_embeddings`, which computes the
    same weights; fp32 as there, whatever the model's dtype.
    """
    G = math.isqrt(pos_embed.shape[1])
    sizes = spatial_shapes.float()[:, None]  # (B, 1, 2) rows, cols
    positions = torch.arange(length, device=spatial_shapes.device, dtype=torch.float32)[None, :, None]  # (1, T, 1)
    rows = torch.div(positions, sizes[..., 1:], rounding_mode="floor")
    index = torch.cat([rows, positions - rows * sizes[..., 1:]], dim=-1)  # (B, T, 2) row, col of each token
    index = index * (positions < sizes.prod(-1, keepdim=True))  # padding -> (0, 0)
    # Antialiased bilinear = a triangle filter stretched by the downscale factor (never narrower than 1 source pixel)
    scale = G / sizes  # (B, 1, 2)
    support = scale.clamp(min=1)
    center = (index + 0.5) * scale - 0.5  # (B, T, 2) in source coordinates
    source = torch.arange(G, device=spatial_shapes.device, dtype=torch.float32)
    weights = (1 - (source - center[..., None]).abs() / support[..., None]).clamp(min=0)  # (B, T, 2, G)
    weights = weights / weights.sum(-1, keepdim=True)
    weights = (weights[..., 0, :, None] * weights[..., 1, None, :]).flatten(-2)  # (B, T, G*G) outer product
    return (weights @ pos_embed[0].float()).to(pos_embed.dtype)  # (B, T, D)


class AttentionPoolingHead(nn.Module):
    """Multihead attention pooling with one learned probe (SiglipMultiheadAttentionPoolingHead, big_vision MAPHead)."""

    def __init__(self, cfg: TowerConfig):
        super().__init__()
        D = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.probe = nn.Parameter(torch.zeros(1, 1, D))
        self.q = nn.Linear(D, D)
        self.kv = nn.Linear(D, 2 * D)
        self.proj = nn.Linear(D, D)
        self.norm = nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        self.mlp = MLP(D, cfg.intermediate_size, cfg.hidden_act)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D), optional (B, 1, 1, T) bool key mask (True = attend) -> (B, D)."""
        B, T, D = x.shape
        H = self.heads
        q = self.q(self.probe).view(1, 1, H, D // H).transpose(1, 2).expand(B, -1, -1, -1)  # (B, H, 1, Dh)
        kv = self.kv(x).view(B, T, 2, H, D // H).permute(2, 0, 3, 1, 4)  # (2, B, H, T, Dh)
        y = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask)  # (B, H, 1, Dh)
        y = self.proj(y.transpose(1, 2).reshape(B, 1, D))
        y = y + self.mlp(self.norm(y))
        return y[:, 0]  # (B, D)


class ClassTokenPool(nn.Module):
    """Pool by taking the class token (CLIP's `last_hidden_state[:, 0]`)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return x[:, 0]  # (B, D)


class VisionTower(nn.Module):
    """ViT image tower. `embed` -> `blocks` -> `norm` -> pooling `head` -> `proj`.

    `forward` returns transformers' `last_hidden_state` and the pooled embedding (`pooler_output` for SigLIP, the
    projected `image_embeds` = `get_image_features` for CLIP; None when the config has no pooling head).
    """

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.hidden_size
        if cfg.variable_resolution:  # NaFlex: the processor already cut the image into (p, p, C) patches
            self.patch_embed = nn.Linear(cfg.num_channels * cfg.patch_size**2, D)
        else:
            self.patch_embed = nn.Conv2d(cfg.num_channels, D, cfg.patch_size, stride=cfg.patch_size,
                                         bias=cfg.patch_bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens, D))
        self.pre_norm = nn.LayerNorm(D, eps=cfg.layer_norm_eps) if cfg.pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = nn.LayerNorm(D, eps=cfg.layer_norm_eps)  # transformers' post_layernorm
        self.head = None
        if cfg.vision_use_head:
            self.head = AttentionPoolingHead(cfg) if cfg.pooling == "map" else ClassTokenPool()
        self.proj = nn.Linear(D, cfg.projection_dim or D, bias=cfg.projection_bias) if cfg.projection else nn.Identity()

    def embed(self, pixels: torch.Tensor, spatial_shapes: torch.Tensor | None = None) -> torch.Tensor:
        """The tokens entering block 0 (transformers' hidden_states[0]), (B, T, D): from (B, 3, S, S) pixels, or with
        `variable_resolution` (NaFlex) from (B, N, p*p*3) patches and their (B, 2) (rows, cols) grids."""
        x = self.patch_embed(pixels.to(self.patch_embed.weight.dtype))
        if self.cfg.variable_resolution:  # (B, N, D); the square position grid resized to each image's grid
            if spatial_shapes is None:
                raise ValueError("a variable-resolution (NaFlex) vision tower needs spatial_shapes (B, 2)")
            return x + resize_pos_embed(self.pos_embed, spatial_shapes, x.shape[1])
        x = x.flatten(2).transpose(1, 2)  # (B, D, g, g) -> (B, g*g, D)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + g*g, D)
        return self.pre_norm(x + self.pos_embed)

    def key_mask(self, x: torch.Tensor, spatial_shapes: torch.Tensor | None) -> torch.Tensor | None:
        """NaFlex: (B, 1, 1, T) bool, True for an image's real patches (padding masked as keys); None otherwise."""
        if not self.cfg.variable_resolution:
            return None
        return patch_mask(spatial_shapes, x.shape[1])[:, None, None, :]

    def forward(self, pixels: torch.Tensor, spatial_shapes: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, 3, S, S) pixels, or with `variable_resolution` (B, N, p*p*3) patches + (B, 2) spatial_shapes
        -> last_hidden_state (B, T, D), pooled (B, P) or None. NaFlex's padded patches (beyond rows*cols) are masked
        as keys in every block and in the pooling head; their own outputs are meaningless."""
        x = self.embed(pixels, spatial_shapes)
        return self.forward_from(x, 0, self.key_mask(x, spatial_shapes))

    def forward_from(self, x: torch.Tensor, start: int, mask: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`forward` from the input of block `start` on (`len(blocks)`: only the final norm and the head): what a
        change to block `start` or later does, without re-running the blocks before it."""
        for block in self.blocks[start:]:
            x = block(x, mask)
        # SigLIP post-norms every token and pools the normed tokens; CLIP's last_hidden_state is the encoder output
        # and post_layernorm applies to the pooled class token only (CLIPVisionTransformer.forward).
        if self.cfg.norm_tokens:
            x = self.norm(x)
        if self.head is None:
            return x, None
        pooled = self.head(x, mask)  # (B, D)
        if not self.cfg.norm_tokens:
            pooled = self.norm(pooled)
        return x, self.proj(pooled)

    def layer_indices(self, layers: int | list[int] | tuple[int, ...]) -> list[int]:
        """Layer numbers as transformers' `hidden_states` indices (0 = embeddings, i = output of block i; negative
        from the end, -1 = the last block) -> non-negative indices; out-of-range numbers are a ValueError."""
        depth = len(self.blocks)
        out = []
        for k in [layers] if isinstance(layers, int) or not hasattr(layers, "__iter__") else list(layers):
            if isinstance(k, bool) or not hasattr(k, "__index__") or not -(depth + 1) <= int(k) <= depth:
                raise ValueError(f"layer {k!r} is out of range for a vision tower of {depth} blocks "
                                 f"(hidden_states 0..{depth}, or -{depth + 1}..-1)")
            out.append(int(k) % (depth + 1))
        if not out:
            raise ValueError("no layer given")
        return out

    def forward_intermediates(self, pixels: torch.Tensor, layers: int | list[int] | tuple[int, ...],
                              post_norm: bool = False, spatial_shapes: torch.Tensor | None = None) -> torch.Tensor:
        """The tokens after the given layers, running only the blocks up to the deepest one (VLM feature taps).

        Layer K is transformers' `output_hidden_states=True` `hidden_states[K]`: K = 0 the embeddings, K = i the
        output of block i, negative K from the end (-1 the last block, -2 the one before: LLaVA's "select layer").
        transformers applies the final LayerNorm only to `last_hidden_state`, so the taps are taken without it
        unless `post_norm` (PaliGemma-style: the last layer after the final LayerNorm is `last_hidden_state`).

        Returns:
            (B, T, D) for one layer; several layers are concatenated on the feature axis, (B, T, D * len(layers)).
        """
        wanted = self.layer_indices(layers)
        x = self.embed(pixels, spatial_shapes)  # (B, T, D) = hidden_states[0]
        mask = self.key_mask(x, spatial_shapes)
        taps = {0: x} if 0 in wanted else {}
        for i, block in enumerate(self.blocks[:max(wanted)], start=1):
            x = block(x, mask)
            if i in wanted:  # keep only the requested layers (a 27-block tower's activations add up)
                taps[i] = x
        feats = [self.norm(taps[k]) if post_norm else taps[k] for k in wanted]
        return feats[0] if len(feats) == 1 else torch.cat(feats, dim=-1)


class TextTower(nn.Module):
    """Text transformer. Pools the last position (SigLIP) or the EOS position (CLIP), then projects (`head`)."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.hidden_size
        self.tok_embed = nn.Embedding(cfg.vocab_size, D)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.max_position_embeddings, D))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        self.head = nn.Linear(D, cfg.pooled_size, bias=cfg.projection_bias) if cfg.projection else nn.Identity()

    def attention_mask(self, mask: torch.Tensor | None, L: int) -> torch.Tensor | None:
        """Padding mask (B, L) and/or causal mask -> SDPA's boolean mask (True = attend), or None."""
        attn = mask.bool()[:, None, None, :] if mask is not None else None  # (B, 1, 1, L): padded keys masked
        if self.cfg.causal:  # CLIP: position i attends to keys <= i (create_causal_mask in CLIPTextTransformer)
            causal = torch.ones(L, L, dtype=torch.bool, device=self.pos_embed.device).tril()  # (L, L)
            attn = causal if attn is None else attn & causal  # (B, 1, L, L)
        return attn

    def pool_index(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B,) position pooled, for "eos" pooling (both of CLIPTextTransformer.forward's rules)."""
        if self.cfg.eos_rule == "argmax":  # legacy configs (eos_token_id 2): the EOS is the highest id
            return ids.to(torch.int32).argmax(dim=-1)
        return (ids == self.cfg.eos_token_id).to(torch.int32).argmax(dim=-1)  # the first EOS (pad may equal EOS)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) token ids, optional (B, L) padding mask -> last_hidden_state (B, L, D), pooled (B, P).

        A given mask is always applied (an all-ones mask masks nothing); None = no padding mask, as SigLIP was
        trained (transformers masks padded keys only when the tokenizer returned a mask).
        """
        B, L = ids.shape
        x = self.tok_embed(ids) + self.pos_embed[:, :L]  # (B, L, D)
        attn_mask = self.attention_mask(mask, L)
        for block in self.blocks:
            x = block(x, attn_mask)
        x = self.norm(x)
        if self.cfg.pooling == "eos":
            pooled = x[torch.arange(B, device=x.device), self.pool_index(ids)]  # (B, D)
        else:  # "sticky" EOS: the last position, even when it is padding (as transformers and big_vision do)
            pooled = x[:, -1]
        return x, self.head(pooled)


class Siglip(nn.Module):
    """Both towers plus the learned logit scale (and bias); either tower may be absent (single-tower checkpoints).

    `logits` is "sigmoid" (SigLIP: sigmoid(exp(t) * cos + b), every image-text score on its own) or "softmax"
    (CLIP: exp(t) * cos, softmax over the candidate texts; `logit_bias` stays 0 and is not saved).
    """

    def __init__(self, vision: VisionConfig | None, text: TextConfig | None, logits: str = "sigmoid"):
        super().__init__()
        if logits not in LOGITS:
            raise ValueError(f"logits {logits!r} is not one of {LOGITS}")
        self.logit_kind = logits
        self.vision = VisionTower(vision) if vision is not None else None
        self.text = TextTower(text) if text is not None else None
        self.logit_scale = nn.Parameter(torch.zeros(1))
        self.logit_bias = nn.Parameter(torch.zeros(1))

    def logits(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """Pooled image (N, D) and text (M, D) embeddings -> logits_per_image (N, M), before sigmoid / softmax."""
        return pair_logits(image_embeds, text_embeds, self.logit_scale, self.logit_bias, self.logit_kind)


def pair_logits(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale, logit_bias,
                kind: str = "sigmoid") -> torch.Tensor:
    """logits_per_image (N, M) for either logit kind (the bias only for "sigmoid")."""
    if kind == "softmax":
        return softmax_logits(image_embeds, text_embeds, logit_scale)
    return sigmoid_logits(image_embeds, text_embeds, logit_scale, logit_bias)


def softmax_logits(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale) -> torch.Tensor:
    """As transformers' CLIPModel.forward: cosine similarity * exp(t), no bias, computed text-major and transposed."""
    return sigmoid_logits(image_embeds, text_embeds, logit_scale, 0.0)


def sigmoid_logits(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale, logit_bias) -> torch.Tensor:
    """Pooled image (N, D) and text (M, D) embeddings -> logits_per_image (N, M), before the sigmoid.

    As transformers' SiglipModel.forward: cosine similarity * exp(t) + b, computed text-major and transposed.
    """
    image_embeds = image_embeds / image_embeds.norm(p=2, dim=-1, keepdim=True)
    text_embeds = text_embeds / text_embeds.norm(p=2, dim=-1, keepdim=True)
    scale = torch.as_tensor(logit_scale, dtype=text_embeds.dtype).exp()
    logits_per_text = text_embeds @ image_embeds.t() * scale + torch.as_tensor(logit_bias, dtype=text_embeds.dtype)
    return logits_per_text.t()
