"""open_clip's text side, ported: its clean functions and its CLIP tokenizer (`SimpleTokenizer`, OpenAI's BPE).

Ported from open_clip `src/open_clip/tokenizer.py` (v3.3.0: `basic_clean`, `whitespace_clean`, `canonicalize_text`,
`get_clean_fn`, `bytes_to_unicode`, `get_pairs`, `SimpleTokenizer`), itself copied from openai/CLIP
`clip/simple_tokenizer.py`. The BPE is read from the checkpoint folder's tokenizer files (tokenizer.json, or
vocab.json + merges.txt, as transformers' CLIPTokenizer saves them) instead of open_clip's bundled
bpe_simple_vocab_16e6.txt.gz: the merges are the same list, and the vocabulary is rebuilt from them the way
SimpleTokenizer does, then checked against the file's.

Where it differs from transformers' CLIPTokenizer (siglite.preprocess.text): html.unescape (twice) before
lowercasing; the special tokens it keeps whole are open_clip's `<start_of_text>` / `<end_of_text>` (text containing
`<|endoftext|>` is plain text here); too-long texts are cut to the length with the last id set to `<end_of_text>`;
padding is 0, and no attention mask is returned (the text tower is causal and pools at argmax(ids) = `<end_of_text>`).
"""

from __future__ import annotations

import html
import json
import string
from collections.abc import Sequence
from functools import lru_cache
from itertools import pairwise
from pathlib import Path

import numpy as np

from ..errors import LoadError

OPEN_CLIP_SPECIALS = ("<start_of_text>", "<end_of_text>")
HF_SPECIALS = ("<|startoftext|>", "<|endoftext|>")  # the same two tokens under transformers' names
N_MERGES = 49152 - 256 - 2  # SimpleTokenizer keeps merges[1:49152-256-2+1] of its file (the first line is a header)


# ----------------------------------------------------------------------------------------------------------- cleaning


def basic_clean(text: str) -> str:
    """OpenAI CLIP / open_clip `basic_clean` (openai/CLIP `clip/simple_tokenizer.py`, open_clip `tokenizer.py`):
    ftfy.fix_text (repairs mojibake such as "cafÃ©", decodes HTML entities, uncurls quotes, unifies full-width forms,
    NFC-normalises), then html.unescape twice, strip. ftfy is a core dependency: CLIP was trained on text cleaned so,
    and both references apply it whenever it is installed."""
    try:
        import ftfy
    except ImportError as e:  # a broken install: say what is missing rather than tokenize differently
        raise LoadError(f"CLIP tokenization needs ftfy ({e}); pip install ftfy") from None
    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


_PUNCTUATION = str.maketrans("", "", string.punctuation)


def canonicalize_text(text: str) -> str:
    """open_clip `canonicalize_text`, itself from big_vision evaluators/proj/image_text/prompt_engineering.py#L94
    (commit 53f18ca): "_" -> " ", drop punctuation, lowercase, collapse whitespace."""
    text = text.replace("_", " ").translate(_PUNCTUATION).lower()
    return " ".join(text.split()).strip()


CLEAN_FNS = {  # open_clip get_clean_fn
    "canonicalize": lambda s: canonicalize_text(basic_clean(s)),
    "lower": lambda s: " ".join(basic_clean(s).split()).strip().lower(),
    "whitespace": lambda s: " ".join(basic_clean(s).split()).strip(),
}


# ---------------------------------------------------------------------------------------------------- SimpleTokenizer


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """Every byte -> a printable unicode character (the byte-level BPE's alphabet), as openai/CLIP."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2 ** 8):
        if b not in bs:
            bs.append(b)
            cs.append(2 ** 8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def read_bpe(folder: Path) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """(merges, vocabulary) from tokenizer.json, else vocab.json + merges.txt."""
    tj, vocab_json, merges_txt = folder / "tokenizer.json", folder / "vocab.json", folder / "merges.txt"
    try:
        if tj.is_file():
            model = json.loads(tj.read_text(encoding="utf-8")).get("model") or {}
            if model.get("type") != "BPE":
                raise LoadError(f"{tj}: not a BPE tokenizer (model.type {model.get('type')!r})")
            merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
            vocab = dict(model.get("vocab") or {})
            for tok in json.loads(tj.read_text(encoding="utf-8")).get("added_tokens", []):
                vocab.setdefault(tok["content"], tok["id"])
        elif vocab_json.is_file() and merges_txt.is_file():
            lines = merges_txt.read_text(encoding="utf-8").split("\n")
            merges = [tuple(m.split()) for m in lines if m and not m.startswith("#version")]
            vocab = json.loads(vocab_json.read_text(encoding="utf-8"))
        else:
            raise LoadError(f"{folder}: no CLIP BPE files for open_clip's tokenizer (tokenizer.json, or vocab.json + "
                            "merges.txt: copy them from the hub repo, e.g. openai/clip-vit-base-patch32)")
    except (OSError, ValueError) as e:
        raise LoadError(f"{folder}: cannot read the CLIP BPE files ({type(e).__name__}: {e})") from e
    return merges[:N_MERGES], vocab


class SimpleTokenizer:
    """open_clip's `SimpleTokenizer` (OpenAI CLIP BPE): clean, split, byte-level BPE with `</w>`, then
    `[<start_of_text>] + ids + [<end_of_text>]` cut to `max_length` (last id `<end_of_text>`), zero-padded.
    Same interface as `siglite.preprocess.text.TextTokenizer` (ids, None)."""

    kind, returns_mask, tokenizer_class = "open_clip_bpe", False, "open_clip.SimpleTokenizer"

    def __init__(self, folder: str | Path, max_length: int, clean: str = "lower"):
        import regex

        if clean not in CLEAN_FNS:
            raise LoadError(f"open_clip tokenizer clean {clean!r} is not one of {list(CLEAN_FNS)}")
        self.folder, self.max_length, self.clean = Path(folder), int(max_length), clean
        merges, file_vocab = read_bpe(self.folder)
        self.byte_encoder = bytes_to_unicode()
        # the vocabulary exactly as SimpleTokenizer builds it: bytes, bytes + </w>, merges, the two specials
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + list(OPEN_CLIP_SPECIALS)
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        named = {**self.encoder, **{hf: self.encoder[oc] for oc, hf in zip(OPEN_CLIP_SPECIALS, HF_SPECIALS)}}
        wrong = [t for t, i in file_vocab.items() if named.get(t, i) != i]
        if wrong or len(file_vocab) != len(vocab):
            raise LoadError(f"{self.folder}: the tokenizer files' vocabulary ({len(file_vocab)} tokens) is not the one "
                            f"open_clip builds from their merges ({len(vocab)}; e.g. {wrong[:3]})")
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.sot_id, self.eot_id = self.encoder[OPEN_CLIP_SPECIALS[0]], self.encoder[OPEN_CLIP_SPECIALS[1]]
        self.cache = {t: t for t in OPEN_CLIP_SPECIALS}
        words = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
        self.pattern = regex.compile("|".join(OPEN_CLIP_SPECIALS) + "|" + words, regex.IGNORECASE)
        self._clean = CLEAN_FNS[clean]

    def bpe(self, token: str) -> str:
        """Greedy lowest-rank merging of one pre-token (its last symbol carries `</w>`); symbols joined by spaces."""
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = set(pairwise(word))
            bigram = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        self.cache[token] = " ".join(word)
        return self.cache[token]

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in self.pattern.findall(self._clean(text)):
            piece = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(piece).split(" "))
        return ids

    def __call__(self, texts: str | Sequence[str]) -> tuple[np.ndarray, None]:
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), self.max_length), dtype=np.int64)
        for row, text in zip(out, texts):
            if not isinstance(text, str):
                raise TypeError(f"texts must be strings, got {type(text).__name__}")
            ids = [self.sot_id] + self.encode(text) + [self.eot_id]
            if len(ids) > self.max_length:
                ids = ids[: self.max_length - 1] + [self.eot_id]
            row[: len(ids)] = ids
        return out, None

    def settings(self) -> dict:
        return {"kind": self.kind, "tokenizer_class": self.tokenizer_class, "max_length": self.max_length,
                "open_clip_clean": self.clean, "vocab_size": len(self.encoder), "pad_id": 0, "bos_id": self.sot_id,
                "eos_id": self.eot_id, "returns_mask": False}

    def __repr__(self) -> str:
        return f"SimpleTokenizer({str(self.folder)!r}, max_length={self.max_length}, clean={self.clean!r})"
