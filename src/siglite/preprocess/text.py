"""Text tokenization that reproduces Hugging Face transformers (5.x) token ids exactly, without importing it.

The reference is ``AutoTokenizer.from_pretrained(folder)(texts, padding="max_length", max_length=max_length,
truncation=True)``. What that does depends on which class AutoTokenizer picks for the folder
(transformers/models/auto/tokenization_auto.py, ``AutoTokenizer.from_pretrained``):

* ``SiglipTokenizer`` (google/siglip-* checkpoints: spiece.model + tokenizer_config.json). In transformers 5 this
  is still the pure-Python SentencePiece tokenizer (``SentencePieceBackend``), *not* converted to a fast one.
  It splits on added/special tokens with a Python trie, canonicalizes every other chunk (lowercase, drop
  ``string.punctuation``, collapse whitespace, strip), encodes ``"<unk>" + chunk`` with SentencePiece and drops
  the ``<unk>`` pieces, appends ``</s>`` unless the ids already end with it, truncates to ``max_length`` (eos
  included) and pads with ``</s>``. It returns an attention_mask only if tokenizer_config.json's
  ``model_input_names`` (class default: input_ids + attention_mask) includes it; the google/siglip configs list
  just ``["input_ids"]``. -> ``kind == "sentencepiece"``, implemented with the ``sentencepiece`` library below.
* ``GemmaTokenizer`` (SigLIP 2 with config.json model_type "siglip", and the i18n so400m checkpoint) and
  ``Siglip2Tokenizer`` (picked *instead of* the declared GemmaTokenizer when config.json's model_type is
  "siglip2", because "siglip2" is in MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS; it adds a ``Lowercase``
  normalizer). Both are ``TokenizersBackend`` subclasses whose ``__init__`` *rebuilds* the backend from
  tokenizer.json's vocab/merges with a fixed pipeline, keeps tokenizer.json's post-processor (tokenizer_config's
  add_bos_token/add_eos_token are dropped when tokenizer.json exists), pads on the class default side "left"
  unless the config says otherwise, and return an attention_mask. -> ``kind == "tokenizers"``, implemented by
  replaying the same ``tokenizers`` library calls.
* ``TokenizersBackend`` / ``PreTrainedTokenizerFast``: tokenizer.json loaded as is. -> ``kind == "tokenizers"``.
* ``CLIPTokenizer`` (= ``CLIPTokenizerFast`` in transformers 5; openai/clip-*, laion CLIP): byte-level BPE with the
  ``</w>`` end-of-word suffix, rebuilt by models/clip/tokenization_clip.py from tokenizer.json's vocab/merges or
  from vocab.json + merges.txt: NFC, whitespace runs -> " ", lowercase; split on the CLIP regex (contractions,
  letter runs, single digits, punctuation runs; the two special tokens kept whole); ``<|startoftext|>`` and
  ``<|endoftext|>`` around the text (RobertaProcessing), truncated to ``max_length`` (77) and padded on the right
  with the configured pad token (``<|endoftext|>`` by default). -> ``kind == "tokenizers"``, the same
  ``tokenizers`` calls, after OpenAI CLIP's ``basic_clean`` (ftfy.fix_text, html.unescape twice, strip), which
  transformers 4's pure-Python CLIPTokenizer (ftfy installed), OpenAI CLIP and open_clip apply and transformers 5's
  CLIPTokenizer no longer does: the ids equal transformers 5's on text ftfy leaves alone, and differ where it
  repairs something (mojibake "cafÃ©", HTML entities "&amp;", curly quotes, full-width letters).

Any other tokenizer class raises ``LoadError`` instead of guessing.
"""

from __future__ import annotations

import copy
import json
import re
import string
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from siglite.errors import LoadError, SigliteError

from .open_clip_text import basic_clean

__all__ = ["TextTokenizer", "load_tokenizer"]

SPIECE_UNDERLINE = "▁"

# transformers.tokenization_utils_base.PreTrainedTokenizerBase.SPECIAL_TOKENS_ATTRIBUTES (order matters)
_SPECIAL_TOKENS_ATTRIBUTES = [
    "bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"
]

# transformers/models/auto/tokenization_auto.py: TOKENIZER_MAPPING_NAMES entries for the model types siglite
# loads, and the subset of MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS among them.
_REGISTERED_TOKENIZER = {"siglip": "SiglipTokenizer", "siglip2": "Siglip2Tokenizer", "clip": "CLIPTokenizer"}
_INCORRECT_HUB_CLASS = {"siglip2"}
_GENERIC_CLASSES = {"TokenizersBackend", "PythonBackend", "PreTrainedTokenizerFast", "MistralCommonBackend"}

_SPIECE_CLASSES = {"SiglipTokenizer"}
_REBUILT_BPE_CLASSES = {"GemmaTokenizer", "Siglip2Tokenizer"}
_CLIP_CLASSES = {"CLIPTokenizer"}
# transformers models/clip/tokenization_clip.py CLIPTokenizer.__init__: the pre-tokenizer split pattern
_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_FILE_CLASSES = {"TokenizersBackend"}

# Class-level defaults (transformers: tokenization_utils_base.PreTrainedTokenizerBase, models/gemma/
# tokenization_gemma.py GemmaTokenizer, models/siglip2/tokenization_siglip2.py Siglip2Tokenizer,
# models/siglip/tokenization_siglip.py SiglipTokenizer).
_CLASS_PADDING_SIDE = {"SiglipTokenizer": "right", "GemmaTokenizer": "left", "Siglip2Tokenizer": "left",
                       "CLIPTokenizer": "right"}
_CLASS_INPUT_NAMES = ["input_ids", "attention_mask"]


# ------------------------------------------------------------------------------------------------------ public API


class TextTokenizer:
    """Tokenize a batch of strings to fixed-length int64 ids (and mask), equal to the transformers reference.

    Attributes: ``max_length`` (sequence length of every row), ``kind`` ("sentencepiece" or "tokenizers"),
    ``returns_mask`` (whether the reference tokenizer returns an attention_mask; if False ``__call__`` returns
    ``None`` for the mask), ``tokenizer_class`` (the transformers class this reproduces).
    """

    max_length: int
    kind: str
    returns_mask: bool
    tokenizer_class: str

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        texts = _check_texts(texts)
        rows = self._encode_rows(texts)
        n = len(rows)
        ids = np.empty((n, self.max_length), dtype=np.int64)
        mask = np.empty((n, self.max_length), dtype=np.int64) if self.returns_mask else None
        for i, (row_ids, row_mask) in enumerate(rows):
            if len(row_ids) != self.max_length:  # cannot happen with padding="max_length" + truncation
                raise SigliteError(f"text {i}: tokenized to {len(row_ids)} ids, expected {self.max_length}")
            ids[i] = row_ids
            if mask is not None:
                mask[i] = row_mask
        return ids, mask

    def _encode_rows(self, texts: list[str]) -> list[tuple[list[int], list[int]]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def settings(self) -> dict:
        """JSON-able description of the tokenization (for an exported model's sidecar)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(kind={self.kind!r}, tokenizer_class={self.tokenizer_class!r}, "
            f"max_length={self.max_length}, returns_mask={self.returns_mask})"
        )


def load_tokenizer(folder: str | Path, max_length: int) -> TextTokenizer:
    """Load the text tokenizer of a hub-style checkpoint folder, as transformers' AutoTokenizer would.

    ``max_length`` is the text model's ``max_position_embeddings``; every output row has exactly that length.
    Raises ``LoadError`` (one line, naming the file) for missing or broken tokenizer files and for tokenizer
    classes siglite does not reproduce.
    """
    if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or int(max_length) < 1:
        raise SigliteError(f"max_length must be a positive integer, got {max_length!r}")
    max_length = int(max_length)
    folder = Path(folder)
    if not folder.is_dir():
        raise LoadError(f"{folder}: tokenizer folder does not exist or is not a directory")

    files = _Files(folder)
    cls_name = _resolve_tokenizer_class(files)
    if cls_name in _SPIECE_CLASSES:
        if not files.spiece.is_file():
            raise LoadError(f"{files.spiece}: missing ({cls_name} needs spiece.model)")
        return _SentencePieceTokenizer(files, cls_name, max_length)
    if cls_name in _CLIP_CLASSES:
        if not files.tokenizer_json.is_file() and not (files.vocab_json.is_file() and files.merges_txt.is_file()):
            raise LoadError(f"{files.folder}: {cls_name} needs tokenizer.json or vocab.json + merges.txt")
        return _TokenizersTokenizer(files, cls_name, max_length)
    if cls_name in _REBUILT_BPE_CLASSES or cls_name in _FILE_CLASSES:
        if not files.tokenizer_json.is_file():
            raise LoadError(f"{files.tokenizer_json}: missing ({cls_name} needs tokenizer.json)")
        return _TokenizersTokenizer(files, cls_name, max_length)
    raise LoadError(
        f"{files.tokenizer_config if files.tokenizer_config.is_file() else folder}: tokenizer class {cls_name!r} "
        f"is not supported (supported: SiglipTokenizer, GemmaTokenizer, Siglip2Tokenizer, CLIPTokenizer, "
        f"TokenizersBackend)"
    )


# ------------------------------------------------------------------------------------------------- folder reading


class _Files:
    def __init__(self, folder: Path):
        self.folder = folder
        self.config_json = folder / "config.json"
        self.tokenizer_config = folder / "tokenizer_config.json"
        self.special_tokens_map = folder / "special_tokens_map.json"
        self.added_tokens = folder / "added_tokens.json"
        self.tokenizer_json = folder / "tokenizer.json"
        self.spiece = folder / "spiece.model"
        self.vocab_json = folder / "vocab.json"
        self.merges_txt = folder / "merges.txt"
        bpe_files = self.vocab_json.is_file() and self.merges_txt.is_file()
        if not self.tokenizer_json.is_file() and not self.spiece.is_file() and not bpe_files:
            raise LoadError(f"{folder}: no tokenizer files (expected tokenizer.json, spiece.model or "
                            f"vocab.json + merges.txt)")
        self.config = _read_json(self.config_json) if self.config_json.is_file() else {}
        self.tok_config = _read_json(self.tokenizer_config) if self.tokenizer_config.is_file() else {}


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise LoadError(f"{path}: cannot read JSON ({_one_line(e)})") from None
    if not isinstance(data, dict):
        raise LoadError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return (text[:200] + "...") if len(text) > 200 else (text or type(e).__name__)


def _resolve_tokenizer_class(files: _Files) -> str:
    """Which class AutoTokenizer.from_pretrained instantiates (transformers/models/auto/tokenization_auto.py).

    config.json's model_type picks the registered class; the hub class (tokenizer_config.json's tokenizer_class,
    else config.json's) wins over it unless the model type is known to declare a wrong class ("siglip2").
    """
    model_type = files.config.get("model_type") or ""
    tc_class = files.tok_config.get("tokenizer_class")
    hub_class = tc_class or files.config.get("tokenizer_class")
    registered = _REGISTERED_TOKENIZER.get(model_type)
    for name, where in ((tc_class, files.tokenizer_config), (files.config.get("tokenizer_class"), files.config_json)):
        if name is not None and not isinstance(name, str):
            raise LoadError(f"{where}: tokenizer_class must be a string, got {name!r}")
    if hub_class and registered and registered != hub_class.removesuffix("Fast"):
        name = registered if model_type in _INCORRECT_HUB_CLASS else hub_class
        name = _class_from_name(name)
        return name if name not in _GENERIC_CLASSES else "TokenizersBackend"
    if tc_class:
        return _class_from_name(tc_class)
    if hub_class:  # config.json's tokenizer_class
        return _class_from_name(hub_class)
    if registered:
        return registered
    raise LoadError(
        f"{files.tokenizer_config if files.tokenizer_config.is_file() else files.folder}: no tokenizer_class "
        f"and config.json model_type {model_type!r} does not name a tokenizer"
    )


def _class_from_name(name: str) -> str:
    name = name.removesuffix("Fast") if name != "PreTrainedTokenizerFast" else name
    if name in ("PreTrainedTokenizerFast", "PreTrainedTokenizer", "PythonBackend", "TokenizersBackend"):
        return "TokenizersBackend"  # AutoTokenizer maps PythonBackend / PreTrainedTokenizerFast to it
    return name


def _added_token(data: Any):
    """A tokenizers.AddedToken from a serialized dict (transformers' AddedToken *is* tokenizers.AddedToken)."""
    from tokenizers import AddedToken

    if isinstance(data, AddedToken):
        return data
    data = {k: v for k, v in data.items() if k != "__type"}
    return AddedToken(**data)


def _convert_added_tokens(obj: Any) -> Any:
    """transformers PreTrainedTokenizerBase.convert_added_tokens(save=False)."""
    if isinstance(obj, dict) and obj.get("__type") == "AddedToken":
        return _added_token(obj)
    if isinstance(obj, (list, tuple)):
        return [_convert_added_tokens(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _convert_added_tokens(v) for k, v in obj.items()}
    return obj


def _init_kwargs(files: _Files, cls_name: str, uses_tokenizer_json: bool) -> tuple[dict, dict[int, Any]]:
    """Mirror transformers PreTrainedTokenizerBase._from_pretrained: the kwargs the tokenizer class receives.

    Returns (init_kwargs, added_tokens_decoder) with AddedTokens already substituted for named special tokens.
    """
    from tokenizers import AddedToken

    where = files.tokenizer_config
    init = copy.deepcopy(files.tok_config)
    init.pop("tokenizer_class", None)
    init.pop("init_inputs", None)
    if uses_tokenizer_json:  # "if resolved_vocab_files.get('tokenizer_file') is not None"
        init.pop("add_bos_token", None)
        init.pop("add_eos_token", None)
    if "additional_special_tokens" in init and not init.get("extra_special_tokens"):
        init["extra_special_tokens"] = init.pop("additional_special_tokens")
    model_specific = {
        k: init.pop(k)
        for k in list(init)
        if k not in _SPECIAL_TOKENS_ATTRIBUTES and k.endswith("_token") and isinstance(init[k], str)
    }
    if isinstance(init.get("extra_special_tokens"), dict):
        model_specific.update(init.pop("extra_special_tokens"))
    if model_specific:
        init["model_specific_special_tokens"] = model_specific

    decoder: dict[int, Any] = {}
    by_content: dict[str, Any] = {}
    try:
        if "added_tokens_decoder" in init:
            for idx, tok in init["added_tokens_decoder"].items():
                tok = _added_token(tok)
                decoder[int(idx)] = tok
                by_content[str(tok)] = tok
        else:
            # legacy files: special_tokens_map.json, added_tokens.json, tokenizer.json's "added_tokens"
            if files.special_tokens_map.is_file():
                where = files.special_tokens_map
                for key, value in _read_json(files.special_tokens_map).items():
                    if isinstance(value, dict) and key != "extra_special_tokens":
                        value = dict(value)
                        value.pop("special", None)
                        value = AddedToken(**value, special=True)
                    elif key == "extra_special_tokens" and isinstance(value, list):
                        existing = list(init.get("extra_special_tokens") or [])
                        for tok in value:
                            tok = AddedToken(**tok, special=True) if isinstance(tok, dict) else tok
                            if tok not in existing:
                                existing.append(tok)
                        value = existing
                    init[key] = value
                if isinstance(init.get("extra_special_tokens"), dict):
                    init.setdefault("model_specific_special_tokens", {}).update(init.pop("extra_special_tokens"))
            if files.added_tokens.is_file():
                where = files.added_tokens
                specials = {str(init[k]) for k in _SPECIAL_TOKENS_ATTRIBUTES if init.get(k)}
                specials.update(str(t) for t in (init.get("extra_special_tokens") or []))
                for content, index in _read_json(files.added_tokens).items():
                    is_special = content in specials
                    decoder[int(index)] = AddedToken(
                        content, rstrip=False, lstrip=False, normalized=not is_special, special=is_special
                    )
                    by_content[content] = decoder[int(index)]
            if files.tokenizer_json.is_file():
                where = files.tokenizer_json
                for tok in _read_json(files.tokenizer_json).get("added_tokens") or []:
                    tok = dict(tok)
                    idx = tok.pop("id")
                    decoder[int(idx)] = AddedToken(**tok)
                    by_content[str(decoder[int(idx)])] = decoder[int(idx)]
        init["added_tokens_decoder"] = decoder
        init = _convert_added_tokens(init)
        decoder = init["added_tokens_decoder"]
    except LoadError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError) as e:
        raise LoadError(f"{where}: bad added/special token entry ({_one_line(e)})") from None
    for key in _SPECIAL_TOKENS_ATTRIBUTES:
        if key in init and by_content and init[key] is not None:
            init[key] = by_content.get(str(init[key]), init[key])
    return init, decoder


def _special_tokens_state(init: dict) -> tuple[dict[str, Any], list[Any]]:
    """PreTrainedTokenizerBase.__init__: named special tokens map (ordered) and extra special tokens list."""
    from tokenizers import AddedToken

    special: dict[str, Any] = dict.fromkeys(_SPECIAL_TOKENS_ATTRIBUTES)
    for key in _SPECIAL_TOKENS_ATTRIBUTES:
        value = init.get(key)
        if value is not None:
            special[key] = value
    if "extra_special_tokens" in init:
        extra = init["extra_special_tokens"]
    else:  # "additional_special_tokens" is the deprecated name
        extra = init.get("additional_special_tokens")
    extra_list: list[Any] = []
    # leftover "*_token" kwargs that are AddedTokens (str ones were moved to model_specific_special_tokens)
    auto = {
        k: v
        for k, v in init.items()
        if k not in _SPECIAL_TOKENS_ATTRIBUTES and k.endswith("_token") and isinstance(v, AddedToken)
    }
    model_specific = {**auto, **(init.get("model_specific_special_tokens") or {})}
    if isinstance(extra, dict):
        model_specific = {**extra, **model_specific}
    elif isinstance(extra, (list, tuple)):
        extra_list = list(extra)
    for key, value in model_specific.items():
        special[key] = value
    return special, extra_list


def _all_special_tokens(special: dict[str, Any], extra: list[Any]) -> list[str]:
    """PreTrainedTokenizerBase.all_special_tokens."""
    seen: set[str] = set()
    out = []
    for value in list(special.values()) + list(extra):
        if value is None:
            continue
        s = str(value)
        if s not in seen:
            out.append(s)
            seen.add(s)
    return out


def _side(init: dict, key: str, default: str, where: Path) -> str:
    value = init.get(key, default)
    if value not in ("right", "left"):
        raise LoadError(f"{where}: {key} must be 'right' or 'left', got {value!r}")
    return value


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    try:
        texts = list(texts)
    except TypeError:
        raise SigliteError(f"texts must be a sequence of strings, got {type(texts).__name__}") from None
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise SigliteError(f"texts[{i}] must be a string, got {type(t).__name__}")
    return texts


# -------------------------------------------------------------------------------------------- SentencePiece path


class _Trie:
    """transformers.tokenization_python.Trie: split text on added tokens, longest match first (same algorithm)."""

    def __init__(self) -> None:
        self.data: dict = {}
        self._tokens: set[str] = set()

    def add(self, word: str) -> None:
        if not word:
            return
        self._tokens.add(word)
        ref = self.data
        for char in word:
            ref[char] = ref.setdefault(char, {})
            ref = ref[char]
        ref[""] = 1

    def split(self, text: str) -> list[str]:
        states: OrderedDict = OrderedDict()
        offsets = [0]
        skip = 0
        for current, current_char in enumerate(text):
            if skip and current < skip:
                continue
            to_remove = set()
            reset = False
            for start, trie_pointer in states.items():
                if "" in trie_pointer:
                    for lookstart, looktrie_pointer in states.items():
                        if lookstart > start:
                            break
                        elif lookstart < start:
                            lookahead_index = current + 1
                            end = current + 1
                        else:
                            lookahead_index = current
                            end = current
                        next_char = text[lookahead_index] if lookahead_index < len(text) else None
                        if "" in looktrie_pointer:
                            start = lookstart
                            end = lookahead_index
                            skip = lookahead_index
                        while next_char in looktrie_pointer:
                            looktrie_pointer = looktrie_pointer[next_char]
                            lookahead_index += 1
                            if "" in looktrie_pointer:
                                start = lookstart
                                end = lookahead_index
                                skip = lookahead_index
                            if lookahead_index == len(text):
                                break
                            next_char = text[lookahead_index]
                    offsets.append(start)
                    offsets.append(end)
                    reset = True
                    break
                elif current_char in trie_pointer:
                    trie_pointer = trie_pointer[current_char]
                    states[start] = trie_pointer
                else:
                    to_remove.add(start)
            if reset:
                states = OrderedDict()
            else:
                for start in to_remove:
                    del states[start]
            if current >= skip and current_char in self.data:
                states[current] = self.data[current_char]
        for start, trie_pointer in states.items():
            if "" in trie_pointer:
                offsets.append(start)
                offsets.append(len(text))
                break
        offsets.append(len(text))
        tokens = []
        start = 0
        for end in offsets:
            if start >= end:  # start > end: transformers logs a trie bug and skips; start == end: zero-width cut
                continue
            tokens.append(text[start:end])
            start = end
        return tokens


class _SentencePieceTokenizer(TextTokenizer):
    """transformers SiglipTokenizer (models/siglip/tokenization_siglip.py) on top of PreTrainedTokenizer
    (tokenization_python.py) and SentencePieceBackend (tokenization_utils_sentencepiece.py)."""

    kind = "sentencepiece"

    def __init__(self, files: _Files, cls_name: str, max_length: int):
        import sentencepiece as spm

        from tokenizers import AddedToken

        self.tokenizer_class = cls_name
        self.max_length = max_length
        self._files = files
        where = files.tokenizer_config
        init, config_decoder = _init_kwargs(files, cls_name, uses_tokenizer_json=False)

        # SiglipTokenizer.__init__: string special tokens become lstrip/rstrip AddedTokens.
        def wrap(value):
            if isinstance(value, str):
                return AddedToken(value, rstrip=True, lstrip=True, normalized=False, special=True)
            return value

        for key, default in (("eos_token", "</s>"), ("unk_token", "<unk>"), ("pad_token", "</s>")):
            init[key] = wrap(init.get(key, default))
        self.do_lower_case = bool(init.get("do_lower_case", True))
        sp_kwargs = init.get("sp_model_kwargs") or {}
        if not isinstance(sp_kwargs, dict):
            raise LoadError(f"{where}: sp_model_kwargs must be an object")
        self._legacy = init.get("legacy", True)

        # SentencePieceBackend.__init__
        try:
            sp = spm.SentencePieceProcessor(**sp_kwargs)
            sp.Load(str(files.spiece))
        except Exception as e:  # sentencepiece raises OSError/RuntimeError for unreadable protos
            raise LoadError(f"{files.spiece}: not a readable SentencePiece model ({_one_line(e)})") from None
        if not self._legacy:
            from sentencepiece import sentencepiece_model_pb2 as model_pb2

            proto = model_pb2.ModelProto.FromString(sp.serialized_model_proto())
            if proto.normalizer_spec.add_dummy_prefix:
                proto.normalizer_spec.add_dummy_prefix = False
                sp.LoadFromSerializedProto(proto.SerializeToString())
        self._sp = sp
        self._sp_kwargs = sp_kwargs

        # PreTrainedTokenizer.__init__ / PreTrainedTokenizerBase.__init__
        self._added_decoder: dict[int, Any] = dict(config_decoder)
        self._added_encoder: dict[str, int] = {t.content: i for i, t in self._added_decoder.items()}
        self._special, self._extra = _special_tokens_state(init)
        self.padding_side = _side(init, "padding_side", _CLASS_PADDING_SIDE.get(cls_name, "right"), where)
        self.truncation_side = _side(init, "truncation_side", "right", where)
        self.model_input_names = list(init.get("model_input_names") or _CLASS_INPUT_NAMES)
        self.split_special_tokens = bool(init.get("split_special_tokens", False))
        self._all_special = _all_special_tokens(self._special, self._extra)
        self._add_special_tokens([t for t in self._all_special if t not in self._added_encoder])
        self._all_special_set = set(self._all_special)
        self._trie = _Trie()
        for tok in self._added_decoder.values():
            self._trie.add(tok.content)
        for tok in self._all_special:
            self._trie.add(tok)

        self.unk_token = str(self._special["unk_token"])
        self._unk_len = len(self._sp.encode(self.unk_token, out_type=str))
        self.eos_token_id = self._token_to_id(str(self._special["eos_token"]))
        self.pad_token_id = self._token_to_id(str(self._special["pad_token"]))
        self.unk_token_id = self._token_to_id(self.unk_token)
        self.returns_mask = "attention_mask" in self.model_input_names

    # SentencePieceBackend._add_tokens for the special-token strings PreTrainedTokenizer.__init__ adds
    def _add_special_tokens(self, new_tokens: list[str]) -> None:
        from tokenizers import AddedToken

        if not new_tokens:
            return
        next_index = self._vocab_len()
        size = self._sp.get_piece_size()
        for token in new_tokens:
            if token == "" or token in self._added_encoder:
                continue
            tok = AddedToken(token, rstrip=False, lstrip=False, normalized=False, special=True)
            tok_id = self._sp.piece_to_id(token)
            if tok_id < size and self._sp.id_to_piece(tok_id) == token:
                index = tok_id
            else:
                index = next_index
                next_index += 1
            self._added_decoder[index] = tok
            self._added_encoder[token] = index

    def _vocab_len(self) -> int:
        """len(SiglipTokenizer.get_vocab()): distinct tokens of the sp vocab (added ones override) + added."""
        vocab = {}
        for i in range(self._sp.get_piece_size()):
            tok = self._added_decoder.get(i)
            vocab[tok.content if tok is not None else self._sp.id_to_piece(i)] = i
        vocab.update(self._added_encoder)
        return len(vocab)

    def _token_to_id(self, token: str) -> int:
        """PreTrainedTokenizer._convert_token_to_id_with_added_voc."""
        if token in self._added_encoder:
            return self._added_encoder[token]
        return self._sp.piece_to_id(token)

    # SiglipTokenizer.canonicalize_text (big_vision prompt_engineering canonicalization)
    def _canonicalize(self, text: str) -> str:
        if self.do_lower_case:
            text = text.lower()
        text = text.translate(_PUNCT_TABLE)
        text = re.sub(r"\s+", " ", text)
        return text.strip()

    # SiglipTokenizer._tokenize
    def _sp_tokenize(self, text: str) -> list[str]:
        text = self._canonicalize(text)
        tokens = self._sp.encode(self.unk_token + text, out_type=str)
        return tokens[self._unk_len :] if len(tokens) >= self._unk_len else tokens

    # SiglipTokenizer.tokenize -> PreTrainedTokenizer.tokenize
    def tokenize(self, text: str) -> list[str]:
        text = SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " ")
        if self.split_special_tokens:
            tokens = self._sp_tokenize(text)
        else:
            tokens = self._trie.split(text)
            no_split = self._added_encoder
            for i, token in enumerate(tokens):
                if token in no_split:
                    ext = self._added_decoder.get(no_split[token])
                    left = tokens[i - 1] if i > 0 else None
                    right = tokens[i + 1] if i < len(tokens) - 1 else None
                    if ext is not None:
                        if ext.rstrip and right:
                            tokens[i + 1] = right.lstrip()
                        if ext.lstrip and left:
                            tokens[i - 1] = left.rstrip()
                        if ext.single_word:
                            if left and left[-1] != " ":
                                tokens[i - 1] += token
                                tokens[i] = ""
                            elif right and right[0] != " ":
                                tokens[i + 1] = token + tokens[i + 1]
                                tokens[i] = ""
            result: list[str] = []
            for token in tokens:
                if not token:
                    continue
                if token in no_split or token in self._all_special_set:
                    result.append(token)
                else:
                    result.extend(self._sp_tokenize(token))
            tokens = result
        if len(tokens) > 1 and tokens[0] == SPIECE_UNDERLINE and tokens[1] in self._all_special_set:
            tokens = tokens[1:]
        return tokens

    def _encode_one(self, text: str) -> tuple[list[int], list[int]]:
        ids = [self._token_to_id(t) for t in self.tokenize(text)]
        # PreTrainedTokenizer.prepare_for_model: truncate leaving room for the one eos SiglipTokenizer adds
        # (num_special_tokens_to_add == 1), then SiglipTokenizer._add_eos_if_not_present.
        remove = len(ids) + 1 - self.max_length
        if remove > 0:
            ids = ids[:-remove] if self.truncation_side == "right" else ids[remove:]
        if not (ids and ids[-1] == self.eos_token_id):
            ids = ids + [self.eos_token_id]
        # PreTrainedTokenizerBase._pad (padding="max_length")
        pad = self.max_length - len(ids)
        if self.padding_side == "right":
            return ids + [self.pad_token_id] * pad, [1] * len(ids) + [0] * pad
        return [self.pad_token_id] * pad + ids, [0] * pad + [1] * len(ids)

    def _encode_rows(self, texts: list[str]) -> list[tuple[list[int], list[int]]]:
        return [self._encode_one(t) for t in texts]

    def settings(self) -> dict:
        return {
            "kind": self.kind,
            "tokenizer_class": self.tokenizer_class,
            "file": self._files.spiece.name,
            "max_length": self.max_length,
            "lowercase": self.do_lower_case,
            "canonicalize": "siglip",  # drop string.punctuation, collapse whitespace, strip
            "vocab_size": int(self._sp.get_piece_size()),
            "pad_id": int(self.pad_token_id),
            "eos_id": int(self.eos_token_id),
            "bos_id": None,
            "unk_id": int(self.unk_token_id),
            "add_bos": False,
            "add_eos": True,
            "padding_side": self.padding_side,
            "truncation_side": self.truncation_side,
            "returns_mask": self.returns_mask,
            "model_input_names": list(self.model_input_names),
            "special_tokens": sorted(self._added_encoder),
            "split_special_tokens": self.split_special_tokens,
            "legacy": bool(self._legacy),
        }


_PUNCT_TABLE = str.maketrans("", "", string.punctuation)


# ---------------------------------------------------------------------------------------------- tokenizers path


def _bpe_vocab_merges(files: _Files, cls_name: str):
    """(vocab, merges, post_processor, padding, truncation) for a class that rebuilds its BPE backend: from
    tokenizer.json (TokenizersBackend.convert_to_native_format) or, for CLIP, from vocab.json + merges.txt."""
    from tokenizers import Tokenizer
    from tokenizers.models import BPE

    tj_path = files.tokenizer_json
    if not tj_path.is_file():  # vocab.json + merges.txt, read as tokenizers' BPE(vocab=path, merges=path) does
        try:
            vocab, merges = BPE.read_file(str(files.vocab_json), str(files.merges_txt))
        except Exception as e:
            raise LoadError(f"{files.vocab_json}: cannot read vocab.json / merges.txt ({_one_line(e)})") from None
        return vocab, merges, None, None, None
    tj = _read_json(tj_path)
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), (dict, list)):
        raise LoadError(f"{tj_path}: {cls_name} needs a BPE model, got {model.get('type')!r}")
    vocab = model["vocab"]
    if isinstance(vocab, list):
        vocab = {t[0] if isinstance(t, list) else t: i for i, t in enumerate(vocab)}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges") or []]
    minimal = dict(tj)
    minimal["model"] = {**model, "vocab": {}, "merges": []}
    minimal["added_tokens"] = []
    try:
        from_file = Tokenizer.from_str(json.dumps(minimal))
    except Exception as e:
        raise LoadError(f"{tj_path}: not a valid tokenizers file ({_one_line(e)})") from None
    return vocab, merges, from_file.post_processor, from_file.padding, from_file.truncation


def _build_gemma(vocab: dict, merges: list, init: dict, where: Path):
    """GemmaTokenizer.__init__ / Siglip2Tokenizer.__init__ (models/gemma/tokenization_gemma.py)."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    for key, default in (("unk_token", "<unk>"), ("bos_token", "<bos>"), ("eos_token", "<eos>"),
                         ("pad_token", "<pad>"), ("mask_token", "<mask>")):
        init.setdefault(key, default)
    try:
        tok = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=True, unk_token=str(init["unk_token"]), dropout=None,
                            byte_fallback=True))
    except Exception as e:
        raise LoadError(f"{where}: cannot build the BPE model ({_one_line(e)})") from None
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.normalizer = normalizers.Replace(" ", "▁")
    return tok


def _build_clip(vocab: dict, merges: list, init: dict, where: Path):
    """CLIPTokenizer.__init__ (transformers models/clip/tokenization_clip.py): byte-level BPE with "</w>"."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    for key, default in (("unk_token", "<|endoftext|>"), ("bos_token", "<|startoftext|>"),
                         ("eos_token", "<|endoftext|>"), ("pad_token", "<|endoftext|>")):
        init.setdefault(key, default)
    try:
        tok = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                            end_of_word_suffix="</w>", fuse_unk=False, unk_token=str(init["unk_token"])))
    except Exception as e:
        raise LoadError(f"{where}: cannot build the BPE model ({_one_line(e)})") from None
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


class _TokenizersTokenizer(TextTokenizer):
    """transformers TokenizersBackend (tokenization_utils_tokenizers.py) and its GemmaTokenizer /
    Siglip2Tokenizer / CLIPTokenizer subclasses, replayed with the same `tokenizers` calls in the same order."""

    kind = "tokenizers"

    def __init__(self, files: _Files, cls_name: str, max_length: int):
        from tokenizers import AddedToken, Tokenizer, normalizers, processors

        self.tokenizer_class = cls_name
        self.max_length = max_length
        self._files = files
        where = files.tokenizer_config
        init, config_decoder = _init_kwargs(files, cls_name, uses_tokenizer_json=files.tokenizer_json.is_file())
        tj_path = files.tokenizer_json

        if cls_name in _REBUILT_BPE_CLASSES or cls_name in _CLIP_CLASSES:
            # TokenizersBackend.convert_to_native_format (class with its own __init__): vocab/merges from the
            # file, post_processor/padding/truncation from a vocab-less copy of it; the class rebuilds the rest.
            vocab, merges, json_post, json_padding, json_trunc = _bpe_vocab_merges(files, cls_name)
            build = _build_clip if cls_name in _CLIP_CLASSES else _build_gemma
            tok = build(vocab, merges, init, tj_path)
        else:
            try:
                tok = Tokenizer.from_file(str(tj_path))
            except Exception as e:
                raise LoadError(f"{tj_path}: not a valid tokenizers file ({_one_line(e)})") from None
            json_post, json_padding, json_trunc = None, None, None

        # TokenizersBackend.__init__
        truncation = tok.truncation or json_trunc
        if truncation is not None:
            tok.enable_truncation(**truncation)
            init.setdefault("truncation_side", truncation["direction"])
        else:
            tok.no_truncation()
        padding = tok.padding or json_padding
        if padding is not None:
            tok.enable_padding(**padding)
            init.setdefault("pad_token", padding["pad_token"])
            init.setdefault("padding_side", padding["direction"])
        if json_post is not None:
            tok.post_processor = json_post
        update_post = tok.post_processor is None  # add_bos/add_eos were dropped with tokenizer.json present

        # PreTrainedTokenizerBase.__init__
        self._special, self._extra = _special_tokens_state(init)
        self.padding_side = _side(init, "padding_side", _CLASS_PADDING_SIDE.get(cls_name, "right"), where)
        self.truncation_side = _side(init, "truncation_side", "right", where)
        self.model_input_names = list(init.get("model_input_names") or _CLASS_INPUT_NAMES)
        self.split_special_tokens = bool(init.get("split_special_tokens", False))
        tok.encode_special_tokens = self.split_special_tokens

        # TokenizersBackend.__init__: add the config's added tokens, then named/extra special tokens missing
        tokens_to_add = [t for _, t in sorted(config_decoder.items(), key=lambda x: x[0])]
        encoder = [t.content for t in tok.get_added_tokens_decoder().values()] + [str(t) for t in tokens_to_add]
        for value in self._special.values():
            if value is None:
                continue
            if str(value) not in encoder and value not in tokens_to_add:
                tokens_to_add.append(value)
        for value in self._extra:
            if str(value) not in encoder and value not in tokens_to_add:
                tokens_to_add.append(value)
        if tokens_to_add:
            named = [str(t) for t in self._special.values() if t]
            prepared = []
            for t in tokens_to_add:
                if isinstance(t, str):
                    t = AddedToken(t, special=True)
                elif isinstance(t, AddedToken) and not t.special and str(t) in named:
                    t.special = True
                prepared.append(t)
            tok.add_tokens(prepared)
        if update_post:
            tok.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1", special_tokens=[])

        if cls_name == "Siglip2Tokenizer" and tok.normalizer is not None:
            tok.normalizer = normalizers.Sequence([normalizers.Lowercase(), tok.normalizer])
        if cls_name in _CLIP_CLASSES:  # CLIPTokenizer.__init__, after TokenizersBackend.__init__: <sot> text <eot>
            eos, bos = str(self._special["eos_token"]), str(self._special["bos_token"])
            tok.post_processor = processors.RobertaProcessing((eos, tok.token_to_id(eos)), (bos, tok.token_to_id(bos)),
                                                              False, False)  # trim_offsets, add_prefix_space

        self._tok = tok
        self.unk_token_id = self._token_id("unk_token")
        self.pad_token_id = self._token_id("pad_token")
        self.eos_token_id = self._token_id("eos_token")
        self.bos_token_id = self._token_id("bos_token")
        if self._special.get("pad_token") is None or self.pad_token_id is None or self.pad_token_id < 0:
            raise LoadError(f"{where}: the tokenizer has no pad token, cannot pad to max_length")
        self.returns_mask = "attention_mask" in self.model_input_names

        # PreTrainedTokenizerBase._get_padding_truncation_strategies + TokenizersBackend.set_truncation_and_padding
        tok.enable_truncation(
            max_length=max_length, stride=0, strategy="longest_first", direction=self.truncation_side
        )
        tok.enable_padding(
            length=max_length,
            direction=self.padding_side,
            pad_id=self.pad_token_id,
            pad_token=str(self._special["pad_token"]),
            pad_type_id=0,
            pad_to_multiple_of=None,
        )

    def _token_id(self, key: str) -> int | None:
        """TokenizersBackend._convert_token_to_id_with_added_voc (unknown -> unk id)."""
        value = self._special.get(key)
        if value is None:
            return None
        index = self._tok.token_to_id(str(value))
        if index is None:
            unk = self._special.get("unk_token")
            index = self._tok.token_to_id(str(unk)) if unk is not None else None
        return index

    def _encode_rows(self, texts: list[str]) -> list[tuple[list[int], list[int]]]:
        if not texts:
            return []
        if self.tokenizer_class in _CLIP_CLASSES:  # OpenAI CLIP's cleaning first; transformers 5 dropped it
            texts = [basic_clean(t) for t in texts]
        encodings = self._tok.encode_batch(texts, add_special_tokens=True, is_pretokenized=False)
        return [(e.ids, e.attention_mask) for e in encodings]

    def settings(self) -> dict:
        probe = self._tok.encode("", add_special_tokens=True)
        real = [i for i, m in zip(probe.ids, probe.attention_mask) if m]
        add_bos = self.bos_token_id is not None and bool(real) and real[0] == self.bos_token_id
        add_eos = self.eos_token_id is not None and bool(real) and real[-1] == self.eos_token_id
        lowercase = self.tokenizer_class == "Siglip2Tokenizer" or "Lowercase" in repr(self._tok.normalizer)
        return {
            "kind": self.kind,
            "tokenizer_class": self.tokenizer_class,
            "file": self._files.tokenizer_json.name if self._files.tokenizer_json.is_file() else "vocab.json",
            "max_length": self.max_length,
            "lowercase": bool(lowercase),
            "canonicalize": None,
            "clean": "ftfy+html" if self.tokenizer_class in _CLIP_CLASSES else None,
            "vocab_size": int(self._tok.get_vocab_size(with_added_tokens=True)),
            "pad_id": self.pad_token_id,
            "eos_id": self.eos_token_id,
            "bos_id": self.bos_token_id,
            "unk_id": self.unk_token_id,
            "add_bos": bool(add_bos),
            "add_eos": bool(add_eos),
            "padding_side": self.padding_side,
            "truncation_side": self.truncation_side,
            "returns_mask": self.returns_mask,
            "model_input_names": list(self.model_input_names),
            "split_special_tokens": self.split_special_tokens,
        }
