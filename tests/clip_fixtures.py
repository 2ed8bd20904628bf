"""Tiny CLIP checkpoints built on the fly (no downloads): a byte-level BPE trained here in the layout of OpenAI's CLIP
vocabulary, saved with transformers' own `CLIPTokenizer`/`CLIPProcessor.save_pretrained`, and a random-init
transformers `CLIPModel` saved with `save_pretrained`.

`make_clip_tokenizer(folder, layout)`: layout "hub" = what `CLIPTokenizer.save_pretrained` writes in transformers 5
(tokenizer.json + tokenizer_config.json); "vocab" = OpenAI's original files (vocab.json + merges.txt +
tokenizer_config.json + special_tokens_map.json, no tokenizer.json).

The vocabulary is ordered as OpenAI's: the 256 byte symbols, the same with "</w>", the merges in order, then
<|startoftext|> and <|endoftext|> last (so the EOS is the highest id, which transformers' legacy argmax pooling
relies on).
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizer_fixtures import training_corpus

# transformers models/clip/tokenization_clip.py CLIPTokenizer.__init__
SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
_BPE: tuple[dict[str, int], list[tuple[str, str]]] | None = None

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def clip_bpe(vocab_size: int = 900) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of a byte-level BPE with CLIP's normaliser, split and "</w>" suffix, trained on the corpus."""
    global _BPE
    if _BPE is None:
        from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, trainers
        from tokenizers.models import BPE

        tok = Tokenizer(BPE(continuing_subword_prefix="", end_of_word_suffix="</w>", unk_token=EOS))
        tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                               normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False)])
        alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet, end_of_word_suffix="</w>",
                                      show_progress=False, special_tokens=[])
        tok.train_from_iterator(training_corpus(), trainer)
        model = json.loads(tok.to_str())["model"]
        merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
        order = alphabet + [b + "</w>" for b in alphabet] + [a + b for a, b in merges] + [BOS, EOS]
        _BPE = ({t: i for i, t in enumerate(dict.fromkeys(order))}, merges)
    return _BPE


def make_clip_tokenizer(folder: Path, layout: str = "hub", max_length: int = 77) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_bpe()
    if layout == "hub":
        from transformers import CLIPTokenizer

        CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length).save_pretrained(folder)
    else:
        (folder / "vocab.json").write_text(json.dumps(vocab))
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
        specials = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
        (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "CLIPTokenizer",
                                                                  "model_max_length": max_length, **specials}))
        (folder / "special_tokens_map.json").write_text(json.dumps(specials))
    return folder


def make_clip_checkpoint(folder: Path, *, image_size: int = 32, patch_size: int = 8, width: int = 32,
                         text_width: int = 24, depth: int = 2, heads: int = 4, mlp: int = 80, projection: int = 20,
                         eos_rule: str = "first", hidden_act: str = "quick_gelu", crop: int | None = None,
                         seed: int = 0, tokenizer_layout: str = "hub") -> Path:
    """Save a random-weight transformers CLIPModel with its CLIPProcessor (tokenizer + CLIPImageProcessor).

    eos_rule: "first" (config eos_token_id = the EOS id: first-EOS pooling) or "argmax" (eos_token_id 2, as the
    openai configs have: pooling at argmax(ids)).
    """
    import numpy as np
    import torch
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    folder.mkdir(parents=True, exist_ok=True)
    make_clip_tokenizer(folder, tokenizer_layout)
    vocab, _ = clip_bpe()
    eos_id = vocab[EOS] if eos_rule == "first" else 2
    text = dict(hidden_size=text_width, intermediate_size=mlp, num_hidden_layers=depth, num_attention_heads=heads,
                vocab_size=len(vocab), max_position_embeddings=77, bos_token_id=vocab[BOS], eos_token_id=eos_id,
                pad_token_id=vocab[EOS], hidden_act=hidden_act, projection_dim=projection)
    vision = dict(hidden_size=width, intermediate_size=mlp, num_hidden_layers=depth, num_attention_heads=heads,
                  image_size=image_size, patch_size=patch_size, hidden_act=hidden_act, projection_dim=projection)
    # the sub-configs' projection_dim too, so *WithProjection classes load the same folder
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection)
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    with torch.no_grad():  # spread every tensor so that all paths count (init leaves LayerNorms at 1/0)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        model.logit_scale.fill_(float(np.log(20.0)))
    model.save_pretrained(folder, safe_serialization=True)
    crop = crop or image_size
    CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size={"height": crop, "width": crop},
                          image_mean=CLIP_MEAN, image_std=CLIP_STD).save_pretrained(folder)
    return folder
