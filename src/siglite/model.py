"""The whole SigLIP forward pass in one file: vision tower, text tower, pooling heads, logits.

Ported from Hugging Face transformers `models/siglip/modeling_siglip.py` (v5.23) and big_vision
`big_vision/models/vit.py` / `two_towers.py`. Numerics follow transformers exactly; the layout is ours:
q/k/v are one fused `nn.Linear` (one GEMM instead of three), attention is `F.scaled_dot_product_attention`.
Every matrix multiply is a plain `nn.Linear`, so quantizers can find and replace them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
}


@dataclass(frozen=True)
class TowerConfig:
    """Shape of one transformer tower; field names are those of transformers' Siglip*Config."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"
    # vision only
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    vision_use_head: bool = True
    # NaFlex (SigLIP 2 "siglip2" checkpoints): pixels arrive pre-patchified as (B, N, p*p*C) channel-last patches
    # with each image's (rows, cols) patch grid; the patch embedding is a Linear, the square position grid
    # (image_size // patch_size per side) is resized to each image's grid, and padded patches are masked.
    variable_resolution: bool = False
    # text only
    vocab_size: int = 32000
    max_position_embeddings: int = 64
    projection_size: int | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "TowerConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def grid(self) -> int:
        """Patches per side: the convolution is 'valid', so 384 px with patch 14 gives 27 and drops 6 px."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, D = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (3, B, H, T, Dh)
        # mask: (B, 1, 1, T) bool, True = attend; scale defaults to Dh**-0.5 as in transformers
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
    """Pre-norm transformer block (SiglipEncoderLayer)."""

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


class VisionTower(nn.Module):
    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.hidden_size
        if cfg.variable_resolution:  # the processor already cut the image into (p, p, C) patches
            self.patch_embed = nn.Linear(cfg.num_channels * cfg.patch_size**2, D)
        else:
            self.patch_embed = nn.Conv2d(cfg.num_channels, D, cfg.patch_size, stride=cfg.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches, D))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        self.head = AttentionPoolingHead(cfg) if cfg.vision_use_head else None

    def embed(self, pixels: torch.Tensor, spatial_shapes: torch.Tensor | None = None) -> torch.Tensor:
        """The tokens entering block 0 (transformers' hidden_states[0]): (B, 3, S, S) pixels, or with
        `variable_resolution` (B, N, p*p*3) patches and their (B, 2) (rows, cols) grids -> (B, T, D)."""
        x = self.patch_embed(pixels.to(self.patch_embed.weight.dtype))
        if self.cfg.variable_resolution:  # (B, N, D)
            if spatial_shapes is None:
                raise ValueError("a variable-resolution (NaFlex) vision tower needs spatial_shapes (B, 2)")
            return x + resize_pos_embed(self.pos_embed, spatial_shapes, x.shape[1])
        return x.flatten(2).transpose(1, 2) + self.pos_embed  # (B, D, g, g) -> (B, T, D)

    def forward(self, pixels: torch.Tensor, spatial_shapes: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, 3, S, S) pixels, or with `variable_resolution` (B, N, p*p*3) patches + (B, 2) spatial_shapes
        -> last_hidden_state (B, T, D), pooler_output (B, D) or None. Padded patches (beyond rows*cols) are masked
        as keys in every block and in the pooling head; their own outputs are meaningless."""
        x = self.embed(pixels, spatial_shapes)
        mask = None
        if self.cfg.variable_resolution:
            mask = patch_mask(spatial_shapes, x.shape[1])[:, None, None, :]  # (B, 1, 1, T)
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm(x)
        return x, (self.head(x, mask) if self.head is not None else None)


class TextTower(nn.Module):
    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.hidden_size
        self.tok_embed = nn.Embedding(cfg.vocab_size, D)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.max_position_embeddings, D))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        self.head = nn.Linear(D, cfg.projection_size or D)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) token ids, optional (B, L) padding mask -> last_hidden_state (B, L, D), pooler_output (B, P)."""
        L = ids.shape[1]
        x = self.tok_embed(ids) + self.pos_embed[:, :L]  # (B, L, D)
        # Not causal (unlike CLIP). transformers masks padded keys only when the tokenizer returned a mask.
        attn_mask = None if mask is None or bool(mask.all()) else mask.bool()[:, None, None, :]  # (B, 1, 1, L)
        for block in self.blocks:
            x = block(x, attn_mask)
        x = self.norm(x)
        # "Sticky" EOS: the last position is pooled, even when it is padding (as transformers and big_vision do).
        return x, self.head(x[:, -1])


class Siglip(nn.Module):
    """Both towers plus the learned logit scale and bias; either tower may be absent (vision-only checkpoints)."""

    def __init__(self, vision: TowerConfig | None, text: TowerConfig | None):
        super().__init__()
        self.vision = VisionTower(vision) if vision is not None else None
        self.text = TextTower(text) if text is not None else None
        self.logit_scale = nn.Parameter(torch.zeros(1))
        self.logit_bias = nn.Parameter(torch.zeros(1))

    def logits(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """Pooled image (N, D) and text (M, D) embeddings -> logits_per_image (N, M), before the sigmoid."""
        return sigmoid_logits(image_embeds, text_embeds, self.logit_scale, self.logit_bias)


def sigmoid_logits(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale, logit_bias) -> torch.Tensor:
    """Pooled image (N, D) and text (M, D) embeddings -> logits_per_image (N, M), before the sigmoid.

    As transformers' SiglipModel.forward: cosine similarity * exp(t) + b, computed text-major and transposed.
    """
    image_embeds = image_embeds / image_embeds.norm(p=2, dim=-1, keepdim=True)
    text_embeds = text_embeds / text_embeds.norm(p=2, dim=-1, keepdim=True)
    scale = torch.as_tensor(logit_scale, dtype=text_embeds.dtype).exp()
    logits_per_text = text_embeds @ image_embeds.t() * scale + torch.as_tensor(logit_bias, dtype=text_embeds.dtype)
    return logits_per_text.t()
