"""siglite.preprocess.text against the transformers reference tokenizer (AutoTokenizer, padding="max_length").

Tiny tokenizer folders are built on the fly by tests/tokenizer_fixtures.py; transformers is only the reference.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from siglite.errors import LoadError, SigliteError
from siglite.preprocess.text import TextTokenizer, load_tokenizer

import tokenizer_fixtures as tf

transformers = pytest.importorskip("transformers")


def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


_quiet_transformers()

MAX_LENGTHS = (16, 64)

_HAND_TEXTS = [
    # plain / case / punctuation
    "a photo of a cat",
    "Hello, World!",
    "UPPER lower MiXeD CaSe",
    "it's a dog's life — “curly quotes” and «guillemets»",
    "a-b_c.d/e\\f (g) [h] {i} <j> #k @l $m %n ^o &p *q +r =s |t ~u `v",
    "!!!...???",
    "!",
    ".,;:'\"",
    # whitespace
    "",
    " ",
    "   ",
    "\t\n  a\t\tb \n",
    "tab\tsep",
    "new\nline",
    "\r\n",
    " leading space",
    "trailing space ",
    "\u00a0nbsp\u2003em\u3000ideographic",
    "a\x1cb\x1dc\x1ed\x1fe",  # str.isspace() separators that SentencePiece keeps
    "line\x85next\x0bvtab\x0cff",
    "zero\u200bwidth \ufeffbom \u2028ls",
    # unicode
    "Café naïve RÉSUMÉ façade",
    "東京 日本 中文",
    "かわいい",
    "emoji 😀🎉 test",
    "😀" * 20,
    "Ångström ﬁ ① ｆｕｌｌｗｉｄｔｈ",
    "ǅ ß İ Σ ς",
    "\x00ctrl\x07",
    # special-token look-alikes
    "</s>",
    "a </s> b",
    "x</s>",
    "</s>x",
    " </s> ",
    "</s></s>",
    "<unk></s>",
    "<pad>",
    "x<pad>y",
    "<unk>",
    "a<unk>b",
    "<s>",
    "<eos>",
    "<EOS>",
    "<bos> hi <eos>",
    "[@BOS@]",
    "a[@BOS@]b",
    "<unused0><unused1>",
    "<mask>",
    "<start_of_turn>user",
    "<0x41>",
    # the SentencePiece underline itself
    "▁",
    "▁▁a▁b",
    "a ▁ b",
    "▁</s>▁",
    "</s>▁",
    # long (truncation)
    "a " * 100,
    "word " * 40 + "</s>",
    "word " * 14 + "</s>",
    "word " * 62 + "</s>",
    "</s>" * 70,
    "café " * 30,
    "A very long caption about " + ", ".join(f"item {i}" for i in range(80)) + ".",
]


def _texts() -> list[str]:
    rng = random.Random(0)
    corpus = tf.training_corpus()
    texts = list(_HAND_TEXTS)
    for _ in range(60):  # a batch of mixed lengths, most of them in-vocabulary
        texts.append(" ".join(rng.choice(corpus) for _ in range(rng.randint(1, 6))))
    return texts


TEXTS = _texts()


# -------------------------------------------------------------------------------------------------- folder variants


def _edit_json(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def _config(folder: Path, model_type: str | None, max_length: int) -> None:
    if model_type is not None:
        (folder / "config.json").write_text(
            json.dumps({"model_type": model_type, "text_config": {"max_position_embeddings": max_length}})
        )


def _spiece(folder, L, model_type="siglip", edit=None, **kw):
    tf.make_spiece_tokenizer(folder, L, **kw)
    if edit is not None:
        _edit_json(folder / "tokenizer_config.json", edit)
    _config(folder, model_type, L)


def _gemma(folder, L, model_type="siglip", edit=None, edit_json=None, **kw):
    tf.make_gemma_tokenizer(folder, L, **kw)
    if edit is not None:
        _edit_json(folder / "tokenizer_config.json", edit)
    if edit_json is not None:
        _edit_json(folder / "tokenizer.json", edit_json)
    _config(folder, model_type, L)


def _drop(*keys):
    def fn(d):
        for k in keys:
            d.pop(k, None)

    return fn


def _set(**items):
    def fn(d):
        d.update(items)

    return fn


def _extra_added_tokens(d):
    # a non-special, normalized added token: matched after normalization, so Siglip2Tokenizer's Lowercase applies
    new_id = max(d["model"]["vocab"].values()) + 1
    d["added_tokens"].append(
        {"id": new_id, "content": "Photo", "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": True, "special": False}
    )


def _json_padding_left(d):
    d["padding"] = {"strategy": "BatchLongest", "direction": "Left", "pad_to_multiple_of": None, "pad_id": 0,
                    "pad_type_id": 0, "pad_token": "<pad>"}
    d["truncation"] = {"direction": "Left", "max_length": 8, "strategy": "LongestFirst", "stride": 0}


def _spiece_with_stray_json(folder, L, **kw):
    """spiece.model plus somebody's tokenizer.json: SiglipTokenizer still encodes with spiece.model, but without
    an added_tokens_decoder it takes tokenizer.json's "added_tokens" (legacy path)."""
    tf.make_gemma_tokenizer(folder / "gemma", L)
    _spiece(folder, L, **kw)
    (folder / "tokenizer.json").write_bytes((folder / "gemma" / "tokenizer.json").read_bytes())


def _spiece_extra_specials(d):
    plain = {"lstrip": False, "normalized": False, "rstrip": False, "special": True}
    d["added_tokens_decoder"]["0"] = {"content": "<pad>", "single_word": False, **plain}
    d["added_tokens_decoder"]["999"] = {"content": "<s>", "single_word": True, **plain}  # not in the sp vocab
    d["additional_special_tokens"] = ["<pad>", "<s>"]


VARIANTS = {
    # what google/siglip-* ship: SiglipTokenizer, no attention_mask
    "spiece": lambda f, L: _spiece(f, L),
    "spiece-attention-mask": lambda f, L: _spiece(f, L, with_attention_mask=True),
    "spiece-legacy-special-map": lambda f, L: _spiece(f, L, added_tokens_decoder=False),
    "spiece-bare-config": lambda f, L: _spiece(f, L, added_tokens_decoder=False, special_tokens_map=False),
    "spiece-no-config-json": lambda f, L: _spiece(f, L, model_type=None),
    "spiece-left-sides": lambda f, L: _spiece(f, L, edit=_set(padding_side="left", truncation_side="left")),
    "spiece-cased": lambda f, L: _spiece(f, L, edit=_set(do_lower_case=False)),
    "spiece-not-legacy": lambda f, L: _spiece(f, L, edit=_set(legacy=False)),
    "spiece-split-special": lambda f, L: _spiece(f, L, edit=_set(split_special_tokens=True)),
    "spiece-extra-special": lambda f, L: _spiece(f, L, edit=_spiece_extra_specials),
    # a stray tokenizer.json next to spiece.model: SiglipTokenizer still tokenizes with spiece.model
    "spiece-stray-tokenizer-json": lambda f, L: _spiece_with_stray_json(f, L),
    "spiece-stray-tokenizer-json-legacy": lambda f, L: _spiece_with_stray_json(f, L, added_tokens_decoder=False),
    # SigLIP 2 / i18n: GemmaTokenizer (config model_type "siglip") or Siglip2Tokenizer ("siglip2")
    "gemma": lambda f, L: _gemma(f, L),
    "gemma-siglip2": lambda f, L: _gemma(f, L, model_type="siglip2"),
    "gemma-bos-eos": lambda f, L: _gemma(f, L, add_bos_token=True),
    "gemma-no-specials": lambda f, L: _gemma(f, L, add_eos_token=False),
    "gemma-default-padding-side": lambda f, L: _gemma(f, L, padding_side=None),
    "gemma-siglip2-default-padding-side": lambda f, L: _gemma(f, L, model_type="siglip2", padding_side=None),
    # tokenizer_config's add_bos/add_eos disagree with tokenizer.json's post-processor: the file wins
    "gemma-config-says-bos": lambda f, L: _gemma(f, L, edit=_set(add_bos_token=True, add_eos_token=False)),
    "gemma-no-post-processor": lambda f, L: _gemma(f, L, edit_json=_set(post_processor=None)),
    "gemma-json-padding-left": lambda f, L: _gemma(f, L, padding_side=None, edit_json=_json_padding_left),
    "gemma-legacy-added-tokens": lambda f, L: _gemma(f, L, edit=_drop("added_tokens_decoder")),
    "gemma-siglip2-normalized-added": lambda f, L: _gemma(
        f, L, model_type="siglip2", edit=_drop("added_tokens_decoder"), edit_json=_extra_added_tokens
    ),
    "gemma-split-special": lambda f, L: _gemma(f, L, edit=_set(split_special_tokens=True)),
    "gemma-truncation-left": lambda f, L: _gemma(f, L, edit=_set(truncation_side="left")),
    "gemma-no-config-json": lambda f, L: _gemma(f, L, model_type=None),
    "tokenizers-backend": lambda f, L: _gemma(f, L, tokenizer_class="PreTrainedTokenizerFast"),
}


def _reference(folder: Path, texts: list[str], max_length: int):
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(str(folder))
    out = ref(texts, padding="max_length", max_length=max_length, truncation=True)
    ids = np.asarray(out["input_ids"], dtype=np.int64)
    mask = np.asarray(out["attention_mask"], dtype=np.int64) if "attention_mask" in out else None
    return type(ref).__name__, ids, mask


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("max_length", MAX_LENGTHS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matches_transformers(tmp_path, variant, max_length):
    folder = tmp_path / variant
    VARIANTS[variant](folder, max_length)
    ref_class, ref_ids, ref_mask = _reference(folder, TEXTS, max_length)

    tok = load_tokenizer(folder, max_length)
    assert isinstance(tok, TextTokenizer)
    assert tok.tokenizer_class == ref_class
    assert tok.kind == ("sentencepiece" if ref_class == "SiglipTokenizer" else "tokenizers")
    assert tok.max_length == max_length
    ids, mask = tok(TEXTS)
    assert ids.dtype == np.int64 and ids.shape == (len(TEXTS), max_length)
    assert tok.returns_mask == (ref_mask is not None)
    mismatched = [(TEXTS[i], ref_ids[i].tolist(), ids[i].tolist()) for i in range(len(TEXTS)) if
                  not np.array_equal(ids[i], ref_ids[i])]
    assert not mismatched, f"{len(mismatched)} rows differ, first: {mismatched[0]!r}"
    if ref_mask is None:
        assert mask is None
    else:
        assert mask is not None and mask.dtype == np.int64
        np.testing.assert_array_equal(mask, ref_mask)
    print(f"{variant} max_length={max_length}: {len(TEXTS)} texts identical to {ref_class}")


def test_expected_reference_classes(tmp_path):
    """What transformers 5.x actually builds for the SigLIP layouts (documents the module's assumptions)."""
    expected = {
        "spiece": ("SiglipTokenizer", False, "right"),
        "gemma": ("GemmaTokenizer", True, "right"),
        "gemma-siglip2": ("Siglip2Tokenizer", True, "right"),
        "gemma-default-padding-side": ("GemmaTokenizer", True, "left"),
    }
    from transformers import AutoTokenizer

    for variant, (cls, has_mask, side) in expected.items():
        folder = tmp_path / variant
        VARIANTS[variant](folder, 64)
        ref = AutoTokenizer.from_pretrained(str(folder))
        assert type(ref).__name__ == cls
        assert ("attention_mask" in ref.model_input_names) == has_mask
        assert ref.padding_side == side
        tok = load_tokenizer(folder, 64)
        assert (tok.tokenizer_class, tok.returns_mask, tok.settings()["padding_side"]) == (cls, has_mask, side)


def test_spiece_semantics(tmp_path):
    tf.make_spiece_tokenizer(tmp_path, 16)
    tok = load_tokenizer(tmp_path, 16)
    ids, mask = tok(["A photo, of a CAT!", "a photo of a cat", "", "x " * 50])
    assert mask is None
    np.testing.assert_array_equal(ids[0], ids[1])  # lowercased, punctuation removed
    assert ids[2].tolist() == [1] * 16  # empty text -> eos, then </s> padding
    assert ids[3, -1] == 1  # truncation keeps the eos
    s = tok.settings()
    json.dumps(s)
    assert s["kind"] == "sentencepiece" and s["lowercase"] is True and s["max_length"] == 16
    assert (s["pad_id"], s["eos_id"], s["unk_id"], s["add_eos"], s["returns_mask"]) == (1, 1, 2, True, False)


def test_gemma_semantics(tmp_path):
    tf.make_gemma_tokenizer(tmp_path, 16)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip"}))
    tok = load_tokenizer(tmp_path, 16)
    ids, mask = tok(["a photo", "A Photo", "x " * 50])
    assert not np.array_equal(ids[0], ids[1])  # GemmaTokenizer does not lowercase
    n = int(mask[0].sum())
    assert ids[0, n - 1] == 1 and (ids[0, n:] == 0).all() and (mask[0, n:] == 0).all()
    assert ids[2, -1] == 1 and mask[2].all()  # truncated, eos kept
    s = tok.settings()
    json.dumps(s)
    assert s["kind"] == "tokenizers" and s["lowercase"] is False
    assert (s["pad_id"], s["eos_id"], s["bos_id"], s["add_bos"], s["add_eos"]) == (0, 1, 2, False, True)

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip2"}))
    tok2 = load_tokenizer(tmp_path, 16)
    ids2, _ = tok2(["a photo", "A Photo"])
    np.testing.assert_array_equal(ids2[0], ids2[1])  # Siglip2Tokenizer lowercases
    assert tok2.settings()["lowercase"] is True


@pytest.mark.parametrize("kind", ["spiece", "gemma"])
def test_batching_and_inputs(tmp_path, kind):
    (tf.make_spiece_tokenizer if kind == "spiece" else tf.make_gemma_tokenizer)(tmp_path, 16)
    tok = load_tokenizer(tmp_path, 16)
    batch, batch_mask = tok(TEXTS[:20])
    for i, t in enumerate(TEXTS[:20]):
        one, one_mask = tok([t])
        np.testing.assert_array_equal(one[0], batch[i])
        if batch_mask is not None:
            np.testing.assert_array_equal(one_mask[0], batch_mask[i])
    single, _ = tok("a photo of a cat")  # a lone string is one text, not a sequence of characters
    np.testing.assert_array_equal(single, tok(["a photo of a cat"])[0])
    empty, empty_mask = tok([])
    assert empty.shape == (0, 16) and empty.dtype == np.int64
    assert empty_mask is None or empty_mask.shape == (0, 16)
    tuple_ids, _ = tok(("a", "b"))
    assert tuple_ids.shape == (2, 16)
    with pytest.raises(SigliteError, match=r"texts\[1\]"):
        tok(["ok", 3])


# ----------------------------------------------------------------------------------------------------------- errors


def test_missing_tokenizer_files(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip"}))
    with pytest.raises(LoadError, match=str(tmp_path)) as exc:
        load_tokenizer(tmp_path, 64)
    assert "\n" not in str(exc.value)
    with pytest.raises(LoadError, match="nope"):
        load_tokenizer(tmp_path / "nope", 64)


def test_broken_files(tmp_path):
    sp = tmp_path / "sp"
    tf.make_spiece_tokenizer(sp, 64)
    (sp / "spiece.model").write_bytes(b"definitely not a protobuf")
    with pytest.raises(LoadError, match="spiece.model") as exc:
        load_tokenizer(sp, 64)
    assert "\n" not in str(exc.value)

    bad_cfg = tmp_path / "bad_cfg"
    tf.make_spiece_tokenizer(bad_cfg, 64)
    (bad_cfg / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(LoadError, match="tokenizer_config.json"):
        load_tokenizer(bad_cfg, 64)

    gm = tmp_path / "gm"
    tf.make_gemma_tokenizer(gm, 64)
    (gm / "tokenizer.json").write_text('{"model": {"type": "BPE"')
    with pytest.raises(LoadError, match="tokenizer.json"):
        load_tokenizer(gm, 64)

    # the class named by the config needs a file the folder lacks
    wrong = tmp_path / "wrong"
    tf.make_gemma_tokenizer(wrong, 64)
    _edit_json(wrong / "tokenizer_config.json", _set(tokenizer_class="SiglipTokenizer"))
    with pytest.raises(LoadError, match="spiece.model"):
        load_tokenizer(wrong, 64)

    other = tmp_path / "other"
    tf.make_spiece_tokenizer(other, 64)
    _edit_json(other / "tokenizer_config.json", _set(tokenizer_class="T5Tokenizer"))
    with pytest.raises(LoadError, match="T5Tokenizer"):
        load_tokenizer(other, 64)


def test_bad_max_length(tmp_path):
    tf.make_spiece_tokenizer(tmp_path, 64)
    for bad in (0, -1, 1.5, "64", True):
        with pytest.raises(SigliteError):
            load_tokenizer(tmp_path, bad)


@pytest.mark.parametrize("kind", ["spiece", "gemma"])
def test_pickle_roundtrip(tmp_path, kind):
    import pickle

    (tf.make_spiece_tokenizer if kind == "spiece" else tf.make_gemma_tokenizer)(tmp_path, 16)
    tok = load_tokenizer(tmp_path, 16)
    clone = pickle.loads(pickle.dumps(tok))
    a, b = tok(TEXTS), clone(TEXTS)
    np.testing.assert_array_equal(a[0], b[0])
    assert (a[1] is None) == (b[1] is None)
    assert clone.settings() == tok.settings()


def test_fixtures_are_cached(tmp_path, monkeypatch):
    """After the first call the trained tokenizers are reused: the trainers are never called again (checked by making
    them fail), and every copy is byte-identical. No wall-clock bound: the CPU is shared."""
    import sentencepiece as spm
    import tokenizers

    tf.make_spiece_tokenizer(tmp_path / "warm_sp")
    tf.make_gemma_tokenizer(tmp_path / "warm_gm")

    def no_training(*args, **kwargs):
        raise AssertionError("a tokenizer fixture trained again instead of using its cached model")

    monkeypatch.setattr(spm.SentencePieceTrainer, "train", no_training)
    monkeypatch.setattr(tokenizers.Tokenizer, "train_from_iterator", no_training)
    for i in range(5):
        tf.make_spiece_tokenizer(tmp_path / f"sp{i}")
        tf.make_gemma_tokenizer(tmp_path / f"gm{i}")
    assert (tmp_path / "sp0" / "spiece.model").read_bytes() == (tmp_path / "sp4" / "spiece.model").read_bytes()
