"""Patch heatmaps: where in the image the vision tower's tokens are strong, or what supports a text.

Without a text, each patch gets a statistic of its token in the chosen layer (default `last_hidden_state`): its L2 norm
("norm"), the mean over the hidden dimension ("mean", what the seed's feature-extractor plot shows), or the attention
the pooling head's probe gives it ("attention": the weights of SigLIP's MAP head, i.e. which patches the pooled
embedding is made of).

With a text, each patch gets the drop in image-text cosine similarity when a window of patches around it is greyed
out (occlusion, Zeiler & Fergus 2014): positive where the region supports the text. Why occlusion and not a direct
comparison of patch tokens with the text embedding: tokens and the text embedding do not live in one space (only the
pooled output does), and mapping each token through the pooling head's value/output projection (the MaskCLIP recipe
for CLIP) does not localise SigLIP here. Measured on the trained fixture (tests/fixtures/trained-tiny, 4x4 patches),
"is the shape's patches' mean above the background's" on held-out one-shape images: occlusion with 2x2-patch windows
93% (69/74), cosine of value-projected tokens with the text 45% (chance), last_hidden_state-vs-text cosine 57%,
gradient norm 100% but not text-specific. With two shapes, the text of one shape makes its own patches hotter than the
other shape's in 98% (49/50) by occlusion and 42-52% by gradient norm (chance). After the tower's blocks every token
carries the whole image, so per-token similarities are flat; removing a region and measuring what the model loses is
what follows the text. Occlusion needs only pooled embeddings, so it runs on every engine (ONNX, OpenVINO, INT8).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import SigliteError
from ..pipeline import Model
from ..preprocess.image import ImageInput, preprocess_batch

MODES = ("norm", "mean", "attention")
BATCH = 32


def default_window(grid: int) -> tuple[int, int]:
    """Occlusion window and stride in patches for a `grid` x `grid` tower: about an eighth of the side (2 patches at
    least), half-overlapping, so a shape a few patches wide is covered whole by some window. Forward passes per image:
    ((grid - window) // stride + 1) ** 2 (9 for the 4x4 fixture, 169 for base-224, 625 for so400m-384)."""
    window = max(2, grid // 8)
    return min(window, grid), max(1, window // 2)


def patch_heatmap(model: Model, image: ImageInput, text: str | None = None, *, mode: str = "norm",
                  layer: int | None = None, post_norm: bool = False, window: int | None = None,
                  stride: int | None = None, preprocess: str = "resize") -> np.ndarray:
    """A (grid, grid) heatmap over the image's patches (row 0 = top).

    Args:
        model: any loaded model (occlusion uses only pooled embeddings; "attention" needs the torch engine).
        image: one image (path, bytes, PIL, array).
        text: with a text: drop in image-text cosine when the patches around each one are greyed out (see the module
            docstring for why occlusion); without: `mode` over the tokens.
        mode: "norm" (L2 norm of each token, default), "mean" (mean over the hidden dimension), "attention" (the
            pooling head's attention to each patch, averaged over heads).
        layer: for "norm"/"mean", the hidden_states layer to read (default last_hidden_state), as
            `Model.image_features`.
        post_norm: with `layer`, apply the final LayerNorm.
        window: occlusion window side in patches (default: `default_window`).
        stride: occlusion stride in patches.
        preprocess: "resize" or "letterbox".
    """
    pixels = _pixels(model, image, preprocess)
    if text is not None:
        if not str(text).strip():
            raise SigliteError("--text is empty")
        return _occlusion(model, pixels, str(text), window, stride)
    if mode not in MODES:
        raise SigliteError(f"unknown heatmap mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "attention":
        return _to_grid(_probe_attention(model, pixels))
    taps = model.layer_options(True, layer, post_norm)
    _, tokens = model.engine.encode_image(pixels, tokens=True, **taps)
    tokens = tokens[0]  # (T, D)
    values = np.linalg.norm(tokens, axis=-1) if mode == "norm" else tokens.mean(axis=-1)
    return _to_grid(values)


def describe(text: str | None, mode: str = "norm", layer: int | None = None) -> str:
    """What a heatmap shows, for titles and colour-bar labels."""
    if text is not None:
        return f'"{text}": drop in image-text cosine when the region is greyed out'
    where = "last_hidden_state" if layer is None else f"hidden_states[{layer}]"
    return {"norm": f"token L2 norm ({where})", "mean": f"token mean over hidden dim ({where})",
            "attention": "pooling-head attention to each patch"}[mode]


def save_heatmap_png(model: Model, image: ImageInput, heat: np.ndarray, out: str | Path, *, title: str,
                     preprocess: str = "resize", size: int = 360, label: str = "") -> Path:
    """Write a PNG: the image as the model sees it (left) and the heatmap over it with a colour bar (right)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise SigliteError(f"heatmap PNGs need matplotlib ({e}); pip install 'siglite[plot]'") from e
    from PIL import Image

    pixels = _pixels(model, image, preprocess)[0]  # (3, H, W), normalised
    cfg = model.image_config
    if preprocess == "letterbox":  # the letterbox recipe normalises with /127.5 - 1 whatever the config says
        x = (pixels + 1.0) * 127.5
    else:
        x = pixels * np.asarray(cfg.image_std, np.float32)[:, None, None] + \
            np.asarray(cfg.image_mean, np.float32)[:, None, None] if cfg.do_normalize else pixels
        x = x / cfg.rescale_factor if cfg.do_rescale else x
    view = np.clip(x, 0, 255).round().astype(np.uint8).transpose(1, 2, 0)
    H, W = view.shape[:2]
    g = heat.shape[0]
    patch = H // g  # the patch grid covers g * patch pixels (a "valid" convolution drops the remainder)
    shown = np.asarray(Image.fromarray(view).resize((size, size * H // W), Image.Resampling.BICUBIC))
    extent = (0, size * g * patch / W, size * H // W * g * patch / H, 0)
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 4.0), dpi=90, gridspec_kw={"width_ratios": [1, 1.2]})
    axes[0].imshow(shown)
    axes[0].set_title("input (as the model sees it)", fontsize=10)
    axes[1].imshow(shown)
    im = axes[1].imshow(heat, cmap="inferno", alpha=0.6, extent=extent, interpolation="nearest")
    axes[1].set_xlim(0, shown.shape[1])
    axes[1].set_ylim(shown.shape[0], 0)
    axes[1].set_title(f"{g}x{g} patches", fontsize=10)
    bar = fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04)
    if label:
        bar.set_label(label, fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out = Path(out)
    if out.parent and not out.parent.exists():
        raise SigliteError(f"{out.parent}: no such folder")
    fig.savefig(out)
    plt.close(fig)
    return out


def _pixels(model: Model, image: ImageInput, preprocess: str) -> np.ndarray:
    if model.image_config is None:
        raise SigliteError(f"{model.name}: this checkpoint has no vision tower / image preprocessing config")
    pixels, _, _ = preprocess_batch([image], model.image_config, preprocess, on_error="raise",
                                    max_pixels=model.max_pixels, background=model.background)
    return pixels  # (1, 3, H, W)


def _to_grid(values: np.ndarray) -> np.ndarray:
    """(T,) per-token values -> (g, g); a leading class token (T = g*g + 1, CLIP) is dropped."""
    T = values.shape[0]
    g = math.isqrt(T)
    if g * g != T and math.isqrt(T - 1) ** 2 == T - 1:
        values, g = values[1:], math.isqrt(T - 1)
    elif g * g != T:
        raise SigliteError(f"{T} tokens do not form a square patch grid")
    return np.asarray(values, np.float32).reshape(g, g)


def _grid_of(model: Model, pixels: np.ndarray) -> int:
    vision = model.config.get("vision_config", model.config)
    patch = int(vision.get("patch_size", 0)) if isinstance(vision, dict) else 0
    if patch <= 0:
        raise SigliteError(f"{model.name}: config.json has no vision patch_size")
    return pixels.shape[-1] // patch


def _occlusion(model: Model, pixels: np.ndarray, text: str, window: int | None, stride: int | None) -> np.ndarray:
    g = _grid_of(model, pixels)
    P = pixels.shape[-1] // g
    w0, s0 = default_window(g)
    window, stride = window or w0, stride or s0
    if not 1 <= window <= g or stride < 1:
        raise SigliteError(f"occlusion window must be 1..{g} patches and stride >= 1 (got {window}, {stride})")
    starts = list(range(0, g - window + 1, stride))
    if starts[-1] != g - window:  # cover the last row/column too
        starts.append(g - window)
    boxes = [(r, c) for r in starts for c in starts]
    t = model.text_features([text])[0]
    t = t / np.linalg.norm(t)

    def cosines(batch: np.ndarray) -> np.ndarray:
        pooled, _ = model.engine.encode_image(batch)
        if pooled is None:
            raise SigliteError("text heatmaps need the pooled image embedding (this tower has no pooling head)")
        return pooled @ t / np.linalg.norm(pooled, axis=-1)

    base = float(cosines(pixels)[0])
    drops = []
    for i in range(0, len(boxes), BATCH):
        batch = np.repeat(pixels, len(boxes[i:i + BATCH]), axis=0)
        for j, (r, c) in enumerate(boxes[i:i + BATCH]):
            batch[j, :, r * P:(r + window) * P, c * P:(c + window) * P] = 0.0  # 0 = mid-grey after normalisation
        drops.append(base - cosines(batch))
    drops = np.concatenate(drops)
    heat, count = np.zeros((g, g), np.float64), np.zeros((g, g))
    for d, (r, c) in zip(drops, boxes):
        heat[r:r + window, c:c + window] += d
        count[r:r + window, c:c + window] += 1
    return (heat / np.maximum(count, 1)).astype(np.float32)


def _probe_attention(model: Model, pixels: np.ndarray) -> np.ndarray:
    """The pooling head's attention weights over tokens (T,), averaged over heads (SiglipMultiheadAttentionPooling-
    Head: softmax(q(probe) . k(x) / sqrt(Dh)))."""
    import torch

    net = getattr(model.engine, "model", None)
    head = getattr(getattr(net, "vision", None), "head", None)
    if head is None or not hasattr(head, "probe"):
        raise SigliteError("mode 'attention' needs the torch engine and a tower with an attention-pooling head")
    vision = net.vision
    param = next(vision.parameters())
    with torch.inference_mode():
        x = torch.from_numpy(pixels).to(param.device, param.dtype)
        hidden = vision(x)[0].float()  # (1, T, D) last_hidden_state: what the head attends over
        head = head.float()
        B, T, D = hidden.shape
        H = head.heads
        q = head.q(head.probe.float()).view(1, H, D // H)  # (1, H, Dh)
        k = head.kv(hidden)[..., :D].view(B, T, H, D // H)  # (1, T, H, Dh)
        att = torch.einsum("bhd,bthd->bht", q, k) / math.sqrt(D // H)
        return att.softmax(-1).mean(1)[0].cpu().numpy()
