"""Write the committed open_clip-format CLIP fixtures (tests/fixtures/open_clip-clip*) with open_clip's own model,
tokenizer and saver.

Run in the open_clip reference environment (open_clip needs torchvision; see tests/fixtures/REPRODUCE-layouts.md):

    /work/refenv-oc/bin/python tests/reference/make_open_clip_clip_fixtures.py tests/fixtures

What it does, per fixture:
1. a tiny OpenAI BPE: the first `MERGES` merges of open_clip's own bpe_simple_vocab_16e6.txt.gz (each merge only uses
   earlier symbols, so a prefix is a valid BPE), read by open_clip's `SimpleTokenizer(bpe_path=...)`: vocabulary =
   256 byte symbols + 256 with `</w>` + the merges + `<start_of_text>`, `<end_of_text>`;
2. an open_clip model config (`open_clip.add_model_config`) shaped like open_clip's ViT-B-32.json (exact GELU, as the
   laion2b ViT-B-32 weights) or ViT-B-32-quickgelu.json (`quick_gelu: true`, as OpenAI's weights): the native
   open_clip `VisionTransformer` (class token, ln_pre, ln_post, `proj`) and `TextTransformer` (causal mask, argmax
   pooling, `text_projection` without bias), at width 32, depth 2, 32x32 px with patch 8, text length 24;
3. `open_clip.create_model(name)` (CLIP's default preprocessing: OpenAI mean/std, bicubic, resize_mode "shortest"),
   weights spread with seeded noise, logit_scale set;
4. `open_clip.push_to_hf_hub.save_for_hf(model, tokenizer, model_config, out)` -> open_clip_config.json,
   open_clip_model.safetensors and the tokenizer's `save_pretrained` files. open_clip's SimpleTokenizer has no
   `save_pretrained`; the hub's open_clip CLIP repos carry transformers' CLIPTokenizer files for the same BPE, so the
   tokenizer handed to `save_for_hf` is transformers' `CLIPTokenizer` built from this vocabulary (vocab.json +
   merges.txt; the special tokens under their transformers names `<|startoftext|>` / `<|endoftext|>`, same ids);
5. reloads the folder as a user would (`create_model_from_pretrained("local-dir:...")`) and stores open_clip's
   outputs on fixed inputs in reference.npz: SimpleTokenizer ids, `encode_image`, the vision transformer's output
   (= transformers' vision last_hidden_state: before ln_post, class token first), `encode_text`, softmax
   probabilities over the texts, and open_clip's preprocessing of a fixed 40x57 image.
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip.push_to_hf_hub import save_for_hf
from open_clip.tokenizer import SimpleTokenizer, default_bpe
from PIL import Image
from transformers import CLIPTokenizer

TEXTS = ["a photo of a cat", "A DOG, running!", "", "ünïcödé café 東京", "word " * 30, "x", "snake_case &amp; more",
         "it's  a\ttab\nnewline", "don't stop, we'll see", "123 4567 89", "<end_of_text> inside", "Zürich; São Paulo"]
MERGES = 1000
CONTEXT = 24  # short, so that "word " * 30 is truncated (open_clip: cut to CONTEXT, the last id set to <end_of_text>)


def tiny_bpe(folder: Path) -> tuple[Path, SimpleTokenizer]:
    """The first MERGES merges of open_clip's BPE file, in its own format (a header line, then one merge a line)."""
    with gzip.open(default_bpe(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    path = folder / "bpe_tiny.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines[: MERGES + 1]))
    return path, SimpleTokenizer(bpe_path=str(path), context_length=CONTEXT)


def hf_tokenizer(folder: Path, bpe_path: Path, simple: SimpleTokenizer) -> CLIPTokenizer:
    """transformers' CLIPTokenizer over the same vocabulary (vocab.json + merges.txt as the hub's CLIP repos)."""
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {names.get(k, k): v for k, v in simple.encoder.items()}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1:]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer.from_pretrained(folder, model_max_length=CONTEXT)  # as users load vocab.json + merges.txt
    assert len(tok) == simple.vocab_size, (len(tok), simple.vocab_size)
    return tok


def model_config(vocab: int, quick_gelu: bool) -> dict:
    """Shaped like open_clip's model_configs/ViT-B-32.json (-quickgelu), at tiny width; embed_dim != width so that
    the projections' orientation is checked."""
    cfg = {"embed_dim": 24,
           "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8,
                          "mlp_ratio": 2.0},
           "text_cfg": {"context_length": CONTEXT, "vocab_size": vocab, "width": 32, "heads": 4, "layers": 2,
                        "mlp_ratio": 2.0}}
    if quick_gelu:
        cfg = {"embed_dim": cfg["embed_dim"], "quick_gelu": True, **{k: v for k, v in cfg.items() if k != "embed_dim"}}
    return cfg


def build(root: Path, name: str, quick_gelu: bool, seed: int) -> None:
    out = root / name
    if out.exists():
        shutil.rmtree(out)
    tmp = Path(tempfile.mkdtemp())
    bpe_path, simple = tiny_bpe(tmp)
    (tmp / "tok").mkdir()
    hf_tok = hf_tokenizer(tmp / "tok", bpe_path, simple)
    cfg = model_config(simple.vocab_size, quick_gelu)
    (tmp / "cfg").mkdir()
    (tmp / "cfg" / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp / "cfg")
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None).eval()
    with torch.no_grad():  # open_clip's init leaves LayerNorms at 1/0 and biases at 0: spread every tensor
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        model.logit_scale.fill_(float(np.log(20.0)))
    save_for_hf(model, hf_tok, cfg, out, safe_serialization=True)

    # Reference outputs from the saved folder, loaded the way open_clip users load a local hub-format folder.
    loaded, preprocess = open_clip.create_model_from_pretrained(f"local-dir:{out}")
    loaded.eval()
    rng = np.random.default_rng(seed)
    pixels = torch.from_numpy(rng.normal(0, 1, (2, 3, 32, 32)).astype(np.float32))
    image = rng.integers(0, 256, (40, 57, 3), dtype=np.uint8)  # -> shortest side 32 (32x45), centre crop 32x32
    ids = simple(TEXTS)
    captured = {}
    hook = loaded.visual.transformer.register_forward_hook(lambda m, i, o: captured.setdefault("tokens", o))
    with torch.no_grad():
        img = loaded.encode_image(pixels)
        txt = loaded.encode_text(ids)
        logits = loaded.logit_scale.exp() * torch.nn.functional.normalize(img, dim=-1) \
            @ torch.nn.functional.normalize(txt, dim=-1).T
        ref = {"pixels": pixels.numpy(), "input_ids": ids.numpy(), "image_pooled": img.numpy(),
               "image_tokens": captured["tokens"].numpy(), "text_pooled": txt.numpy(),
               "probs": logits.softmax(dim=-1).numpy(), "image_uint8": image,
               "image_preprocessed": preprocess(Image.fromarray(image)).numpy()}
    hook.remove()
    np.savez_compressed(out / "reference.npz", **ref)
    shutil.rmtree(tmp)
    print(f"{name}: open_clip {open_clip.__version__}, vocab {simple.vocab_size}, "
          f"files {sorted(p.name for p in out.iterdir())}, "
          f"{sum(p.stat().st_size for p in out.iterdir()) / 1024:.0f} KB")


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
    build(root, "open_clip-clip", quick_gelu=False, seed=3)
    build(root, "open_clip-clip-quickgelu", quick_gelu=True, seed=4)


if __name__ == "__main__":
    main()
