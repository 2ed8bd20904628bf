"""The whole SigLIP forward pass in one file: vision tower, text tower, pooling heads, logits.

Ported from Hugging Face transformers `models/siglip/modeling_siglip.py` (v5.23) and big_vision
`big_vision/models/vit.py` / `two_towers.py`. Numerics follow transformers exactly; the layout is ours:
q/k/v are one fused `nn.Linear` (one GEMM instead of three), attention is `F.scaled_dot_product_attention`.
Every matrix multiply is a plain `nn.Linear`, so quantizers can find and replace them.
"""

from __future__ import annotations

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        H = self.heads
        q = self.q(self.probe).view(1, 1, H, D // H).transpose(1, 2).expand(B, -1, -1, -1)  # (B, H, 1, Dh)
        kv = self.kv(x).view(B, T, 2, H, D // H).permute(2, 0, 3, 1, 4)  # (2, B, H, T, Dh)
        y = F.scaled_dot_product_attention(q, kv[0], kv[1])  # (B, H, 1, Dh)
        y = self.proj(y.transpose(1, 2).reshape(B, 1, D))
        y = y + self.mlp(self.norm(y))
        return y[:, 0]  # (B, D)


class VisionTower(nn.Module):
    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.hidden_size
        self.patch_embed = nn.Conv2d(cfg.num_channels, D, cfg.patch_size, stride=cfg.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches, D))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = nn.LayerNorm(D, eps=cfg.layer_norm_eps)
        self.head = AttentionPoolingHead(cfg) if cfg.vision_use_head else None

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> the tokens entering block 0 (B, T, D) = transformers' `hidden_states[0]`."""
        x = self.patch_embed(pixels.to(self.patch_embed.weight.dtype))  # (B, D, g, g)
        return x.flatten(2).transpose(1, 2) + self.pos_embed  # (B, T, D)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, 3, S, S) -> last_hidden_state (B, T, D), pooler_output (B, D) or None."""
        x = self.embed(pixels)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return x, (self.head(x) if self.head is not None else None)

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
                              post_norm: bool = False) -> torch.Tensor:
        """The tokens after the given layers, running only the blocks up to the deepest one (VLM feature taps).

        Layer K is transformers' `output_hidden_states=True` `hidden_states[K]`: K = 0 the embeddings, K = i the
        output of block i, negative K from the end (-1 the last block, -2 the one before: LLaVA's "select layer").
        transformers applies the final LayerNorm only to `last_hidden_state`, so the taps are taken without it
        unless `post_norm` (PaliGemma-style: the last layer after the final LayerNorm is `last_hidden_state`).

        Returns:
            (B, T, D) for one layer; several layers are concatenated on the feature axis, (B, T, D * len(layers)).
        """
        wanted = self.layer_indices(layers)
        x = self.embed(pixels)  # (B, T, D) = hidden_states[0]
        taps = {0: x} if 0 in wanted else {}
        for i, block in enumerate(self.blocks[:max(wanted)], start=1):
            x = block(x)
            if i in wanted:  # keep only the requested layers (a 27-block tower's activations add up)
                taps[i] = x
        feats = [self.norm(taps[k]) if post_norm else taps[k] for k in wanted]
        return feats[0] if len(feats) == 1 else torch.cat(feats, dim=-1)


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
