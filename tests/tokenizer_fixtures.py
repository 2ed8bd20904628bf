"""Build tiny hub-style tokenizer folders on the fly (no downloads, nothing committed but this file).

`make_spiece_tokenizer(folder, max_length)` writes what google/siglip-base-patch16-224 ships for its text side:
`spiece.model` (SentencePiece unigram, "<pad>"=0, "</s>"=1, "<unk>"=2, nmt_nfkc normalisation, dummy prefix),
`tokenizer_config.json` (tokenizer_class SiglipTokenizer, do_lower_case, eos = pad = "</s>") and
`special_tokens_map.json`.

`make_gemma_tokenizer(folder, max_length)` writes what google/siglip2-base-patch16-224 ships: a Gemma-style
`tokenizer.json` (BPE with byte fallback, normaliser " " -> "▁", "<pad>"=0, "<eos>"=1, "<bos>"=2, "<unk>"=3,
"<mask>"=4, 256 "<0xXX>" byte tokens, TemplateProcessing post-processor from add_bos/add_eos),
`tokenizer_config.json` (tokenizer_class GemmaTokenizer, add_bos_token false, add_eos_token true) and
`special_tokens_map.json`.

Neither writes config.json: the checkpoint builder owns that file (note that AutoTokenizer's choice of class
depends on config.json's model_type, e.g. "siglip2" turns a GemmaTokenizer folder into Siglip2Tokenizer).

The trained model bytes are cached in module-level variables, so every call after the first in a process only
writes files.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

__all__ = ["make_spiece_tokenizer", "make_gemma_tokenizer", "training_corpus"]

_SPIECE_MODEL_BYTES: bytes | None = None
_GEMMA_BPE: tuple[dict[str, int], list[tuple[str, str]]] | None = None
_CORPUS: list[str] | None = None

_SUBJECTS = [
    "a dog", "the cat", "two birds", "an old man", "a young woman", "the children", "a red car", "my friend",
    "a photo", "the chef", "a small boat", "three horses", "the teacher", "a pilot", "our neighbours",
    "a robot", "the river", "a mountain", "the city", "an apple", "a bowl of soup", "the orchestra",
]
_VERBS = [
    "is running on", "sits near", "looks at", "jumps over", "is sleeping under", "flies above", "walks through",
    "is painted on", "stands beside", "eats", "plays with", "is parked in front of", "swims across",
    "reads about", "is drawn next to", "carries", "climbs", "waits for", "dances around", "watches",
]
_OBJECTS = [
    "the beach", "a wooden table", "the green grass", "a busy street", "the snowy hills", "a blue sky",
    "the kitchen", "a crowded market", "the old bridge", "a quiet forest", "the football field", "a shelf",
    "the train station", "a sunny garden", "the dark night", "a glass of water", "the museum", "a bicycle",
]
_ADJECTIVES = [
    "beautiful", "tiny", "huge", "colourful", "blurry", "bright", "dark", "happy", "sad", "vintage", "modern",
    "famous", "rare", "wet", "dry", "noisy", "calm", "fast", "slow", "strange",
]
_EXTRAS = [
    "café", "naïve", "résumé", "Zürich", "São Paulo", "crème brûlée", "façade", "jalapeño", "Ångström",
    "東京", "日本", "中文", "かわいい", "Москва", "Ελλάδα", "über", "garçon", "piñata", "smörgåsbord",
]
_TEMPLATES = [
    "{s} {v} {o}.",
    "a photo of {s}.",
    "A {a} photo of {s} that {v} {o}!",
    "{S} {v} {o}, and it is {a}.",
    "This is {s}; it {v} {o}?",
    "There are {n} {a} things near {o}.",
    "\"{S}\" - {a}, {a2} and {x}.",
    "{x} {s} ({a}) {v} {o}",
    "itap of {s}",
    "a {a} rendering of {s} in {x}.",
    "{S} {v} {o} at {n}:{n2} pm.",
    "{s} and {s2} {v} {o}...",
]


def training_corpus() -> list[str]:
    """A few hundred varied, deterministic English-ish sentences (plus a sprinkle of accents and CJK)."""
    global _CORPUS
    if _CORPUS is None:
        rng = random.Random(1234)
        lines = []
        for i in range(600):
            s = rng.choice(_SUBJECTS)
            t = rng.choice(_TEMPLATES)
            line = t.format(
                s=s,
                S=s[:1].upper() + s[1:],
                s2=rng.choice(_SUBJECTS),
                v=rng.choice(_VERBS),
                o=rng.choice(_OBJECTS),
                a=rng.choice(_ADJECTIVES),
                a2=rng.choice(_ADJECTIVES),
                x=rng.choice(_EXTRAS),
                n=rng.randint(0, 99),
                n2=rng.randint(10, 59),
            )
            if i % 7 == 0:
                line = line.upper()
            lines.append(line)
        lines.extend(_EXTRAS)
        _CORPUS = lines
    return _CORPUS


# ----------------------------------------------------------------------------------------------------------- spiece


def _spiece_model_bytes() -> bytes:
    global _SPIECE_MODEL_BYTES
    if _SPIECE_MODEL_BYTES is None:
        import sentencepiece as spm

        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(training_corpus()),
            model_writer=buf,
            model_type="unigram",
            vocab_size=500,
            hard_vocab_limit=False,
            character_coverage=1.0,
            normalization_rule_name="nmt_nfkc",
            # google/siglip spiece.model: "<pad>"=0, "</s>"=1, "<unk>"=2, no bos
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            pad_piece="<pad>",
            eos_piece="</s>",
            unk_piece="<unk>",
            num_threads=1,
            minloglevel=2,
        )
        _SPIECE_MODEL_BYTES = buf.getvalue()
    return _SPIECE_MODEL_BYTES


_SIGLIP_SPECIAL = {"lstrip": True, "normalized": False, "rstrip": True, "single_word": False}


def make_spiece_tokenizer(
    folder,
    max_length: int = 64,
    *,
    with_attention_mask: bool = False,
    added_tokens_decoder: bool = True,
    special_tokens_map: bool = True,
) -> Path:
    """Write spiece.model + tokenizer_config.json + special_tokens_map.json like google/siglip-base-patch16-224.

    with_attention_mask: the real checkpoints list model_input_names ["input_ids"] (no attention_mask); True drops
    that entry so the tokenizer falls back to the class default (input_ids + attention_mask).
    added_tokens_decoder / special_tokens_map: write those parts (the hub file has both).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spiece.model").write_bytes(_spiece_model_bytes())
    config = {
        "additional_special_tokens": [],
        "clean_up_tokenization_spaces": True,
        "do_lower_case": True,
        "eos_token": "</s>",
        "model_max_length": max_length,
        "pad_token": "</s>",
        "processor_class": "SiglipProcessor",
        "sp_model_kwargs": {},
        "tokenizer_class": "SiglipTokenizer",
        "unk_token": "<unk>",
    }
    if added_tokens_decoder:
        config["added_tokens_decoder"] = {
            "1": {"content": "</s>", **_SIGLIP_SPECIAL, "special": True},
            "2": {"content": "<unk>", **_SIGLIP_SPECIAL, "special": True},
        }
    if not with_attention_mask:
        config["model_input_names"] = ["input_ids"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    if special_tokens_map:
        stm = {
            "eos_token": {"content": "</s>", **_SIGLIP_SPECIAL},
            "pad_token": {"content": "</s>", **_SIGLIP_SPECIAL},
            "unk_token": {"content": "<unk>", **_SIGLIP_SPECIAL},
        }
        (folder / "special_tokens_map.json").write_text(json.dumps(stm, indent=2, sort_keys=True))
    return folder


# ------------------------------------------------------------------------------------------------------------ gemma

# Gemma's first ids: <pad> <eos> <bos> <unk> <mask>, then (in the real vocab) "<2mass>", "[@BOS@]", "<unused0>"...
# and chat markers; a few of each kind are enough to exercise special and non-special added tokens.
_GEMMA_SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
_GEMMA_EXTRA_SPECIAL = ["<start_of_turn>", "<end_of_turn>"]
_GEMMA_NON_SPECIAL_ADDED = ["[@BOS@]", "<unused0>", "<unused1>"]


def _gemma_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a small BPE (▁-prefixed words) and lay its vocab out like Gemma's: specials, bytes, then pieces."""
    global _GEMMA_BPE
    if _GEMMA_BPE is None:
        from tokenizers import Tokenizer, normalizers, pre_tokenizers
        from tokenizers.models import BPE
        from tokenizers.trainers import BpeTrainer

        tok = Tokenizer(BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")  # training only
        trainer = BpeTrainer(vocab_size=700, min_frequency=2, show_progress=False, special_tokens=[])
        tok.train_from_iterator(training_corpus(), trainer)
        model = json.loads(tok.to_str())["model"]
        trained = sorted(model["vocab"].items(), key=lambda kv: kv[1])
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]

        vocab: dict[str, int] = {}
        for piece in _GEMMA_SPECIAL + _GEMMA_NON_SPECIAL_ADDED + _GEMMA_EXTRA_SPECIAL:
            vocab[piece] = len(vocab)
        for b in range(256):
            vocab[f"<0x{b:02X}>"] = len(vocab)
        for piece, _ in trained:
            if piece not in vocab:
                vocab[piece] = len(vocab)
        _GEMMA_BPE = (vocab, merges)
    return _GEMMA_BPE


def make_gemma_tokenizer(
    folder,
    max_length: int = 64,
    *,
    add_bos_token: bool = False,
    add_eos_token: bool = True,
    padding_side: str | None = "right",
    tokenizer_class: str = "GemmaTokenizer",
) -> Path:
    """Write tokenizer.json + tokenizer_config.json + special_tokens_map.json like google/siglip2-base-patch16-224.

    add_bos_token / add_eos_token go both into tokenizer_config.json and into tokenizer.json's TemplateProcessing
    post-processor (as GemmaTokenizerFast.save_pretrained writes them). padding_side None leaves it out of the
    config (transformers then uses the class default, "left" for GemmaTokenizer).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = _gemma_bpe()

    tok = Tokenizer(BPE(vocab=dict(vocab), merges=list(merges), unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    single = ("<bos>:0 " if add_bos_token else "") + "$A:0" + (" <eos>:0" if add_eos_token else "")
    pair = single + (" <bos>:1" if add_bos_token else "") + " $B:1" + (" <eos>:1" if add_eos_token else "")
    specials = []
    if add_bos_token:
        specials.append(("<bos>", vocab["<bos>"]))
    if add_eos_token:
        specials.append(("<eos>", vocab["<eos>"]))
    tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in _GEMMA_SPECIAL])
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in _GEMMA_NON_SPECIAL_ADDED])
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in _GEMMA_EXTRA_SPECIAL])
    tok.save(str(folder / "tokenizer.json"))

    plain = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    decoder = {}
    for piece in _GEMMA_SPECIAL + _GEMMA_NON_SPECIAL_ADDED + _GEMMA_EXTRA_SPECIAL:
        decoder[str(vocab[piece])] = {"content": piece, **plain, "special": piece not in _GEMMA_NON_SPECIAL_ADDED}
    config = {
        "add_bos_token": add_bos_token,
        "add_eos_token": add_eos_token,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": list(_GEMMA_EXTRA_SPECIAL),
        "bos_token": "<bos>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "<eos>",
        "extra_special_tokens": {},
        "model_max_length": max_length,
        "pad_token": "<pad>",
        "sp_model_kwargs": {},
        "spaces_between_special_tokens": False,
        "tokenizer_class": tokenizer_class,
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }
    if padding_side is not None:
        config["padding_side"] = padding_side
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    stm = {
        "additional_special_tokens": list(_GEMMA_EXTRA_SPECIAL),
        "bos_token": {"content": "<bos>", **plain},
        "eos_token": {"content": "<eos>", **plain},
        "pad_token": {"content": "<pad>", **plain},
        "unk_token": {"content": "<unk>", **plain},
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(stm, indent=2, sort_keys=True))
    return folder
