"""`siglite convert`: any layout siglite loads -> a hub-layout folder that transformers 4.x, 5.x and siglite all load.

Written: config.json (transformers field names; an open_clip source keeps its exact-GELU activation as
`hidden_act: "gelu"`, which transformers maps to the same exact GELU), model.safetensors (transformers' key names,
fp32), preprocessor_config.json *and* processor_config.json (`checkpoints.layout.write_processor_files`), and the
source's tokenizer files with tokenizer_config.json made readable by both transformers 4.x and 5.x (5.x writes
`extra_special_tokens` as a list, which 4.x's `_set_model_specific_special_tokens` rejects; it is the 4.x
`additional_special_tokens` list under its new name).

Parity is measured, not assumed: the written folder is loaded back with siglite and compared with the source on the
same pixels and token ids (a round trip is exact: |Δ| = 0), and with transformers' SiglipModel on it when transformers
is installed (input_ids only, SigLIP as trained).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from ..errors import SigliteError

TOKENIZER_FILES = ("spiece.model", "tokenizer.json", "tokenizer.model", "special_tokens_map.json", "added_tokens.json")
PROBE_TEXTS = ["a photo of a cat", "A DOG, running!", "", "ünïcödé café 東京", "snake_case &amp; more", "word " * 40]


def _template_bos_eos(tokenizer_json: Path) -> tuple[bool, bool] | None:
    """Whether tokenizer.json's TemplateProcessing post-processor puts a special token before / after a single text."""
    try:
        post = json.loads(tokenizer_json.read_text()).get("post_processor") or {}
    except (OSError, json.JSONDecodeError):
        return None
    single = post.get("single") if post.get("type") == "TemplateProcessing" else None
    if not single:
        return None
    return "SpecialToken" in single[0], "SpecialToken" in single[-1]


def portable_tokenizer_config(config: dict, tokenizer_json: Path | None = None) -> dict:
    """tokenizer_config.json that transformers 4.x and 5.x read the same way.

    5.x drops add_bos_token / add_eos_token when it saves a tokenizer.json tokenizer (the post-processor decides), but
    4.x's GemmaTokenizerFast then falls back to its defaults (bos on, eos off) and rewrites the post-processor; writing
    the flags the template already encodes keeps 4.x on the same ids (5.x ignores them beside tokenizer.json)."""
    config = dict(config)
    template = _template_bos_eos(tokenizer_json) if tokenizer_json is not None and tokenizer_json.is_file() else None
    if template is not None:
        config.setdefault("add_bos_token", template[0])
        config.setdefault("add_eos_token", template[1])
    extra = config.get("extra_special_tokens")
    if isinstance(extra, list):  # 5.x name and form of 4.x's additional_special_tokens
        config.pop("extra_special_tokens")
        if not config.get("additional_special_tokens"):
            config["additional_special_tokens"] = extra
    if config.get("additional_special_tokens", []) is None:
        config["additional_special_tokens"] = []
    for key in ("is_local", "local_files_only"):  # load-time state 5.x writes back; not settings
        config.pop(key, None)
    return config


def convert(src: str | Path, out: str | Path, *, overwrite: bool = False, revision: str | None = None,
            allow_pickle: bool = False) -> dict:
    """Write `src` (any layout siglite loads) to `out` in the hub layout; returns the parity measured on the result."""
    import siglite

    from ..checkpoints import load_model, resolve, save_checkpoint
    from ..checkpoints.layout import OPEN_CLIP, detect, read_image_processor

    out = Path(out)
    folder = resolve(src, revision=revision)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise SigliteError(f"{out}: already exists (pass --overwrite to replace it)")
        if out.resolve() == folder.resolve():
            raise SigliteError(f"{out}: is the source folder; choose another output folder")
    layout = detect(folder)
    ckpt, model = load_model(folder, allow_pickle=allow_pickle)
    source = siglite.load(folder, engine="torch", device="cpu", allow_pickle=allow_pickle)
    if out.exists():
        shutil.rmtree(out)
    image_processor = read_image_processor(folder) if model.vision is not None else None
    save_checkpoint(model, out, image_config=image_processor)  # single-tower models get a flat tower config
    notes = []
    if model.text is not None:
        from ..checkpoints.open_clip import tokenizer_folder

        tok_src = tokenizer_folder(folder) if layout == OPEN_CLIP else folder
        for name in TOKENIZER_FILES:
            if (tok_src / name).is_file():
                shutil.copyfile(tok_src / name, out / name)
        tok_config = json.loads((tok_src / "tokenizer_config.json").read_text()) \
            if (tok_src / "tokenizer_config.json").is_file() else {}
        portable = portable_tokenizer_config(tok_config, tok_src / "tokenizer.json")
        (out / "tokenizer_config.json").write_text(json.dumps(portable, indent=2))
        if layout == OPEN_CLIP and source.tokenizer.kind == "open_clip_bpe":
            notes.append(f"open_clip's SimpleTokenizer cleans text ({source.tokenizer.clean!r}: html-unescape, "
                         "whitespace, lowercase) and pads with 0; the hub CLIPTokenizer does not unescape html and "
                         "pads with <|endoftext|> (only past the EOS, which the causal, EOS-pooled text tower never "
                         "reads)")
        elif layout == OPEN_CLIP:
            clean = source.tokenizer.clean
            notes.append(f"open_clip cleans text ({clean!r}) before its tokenizer; the hub tokenizer does not "
                         "(SiglipTokenizer canonicalizes by itself)")
    return {"src": str(src), "layout": layout, "out": str(out), **_parity(source, out), "notes": "; ".join(notes)}


def _parity(source, out: Path) -> dict:
    """siglite(source) vs siglite(out) (exact) and vs transformers on `out`, same pixels and ids."""
    import torch

    import siglite

    result: dict = {}
    written = siglite.load(out, engine="torch", device="cpu")
    rng = np.random.default_rng(0)
    ref = None
    try:
        import transformers

        cls = {"siglip": "SiglipModel", "siglip_vision_model": "SiglipVisionModel",
               "siglip_text_model": "SiglipTextModel", "clip": "CLIPModel"}.get(written.config["model_type"])
        cls = cls or written.config["architectures"][0]  # CLIP single towers: with or without the projection
        ref = getattr(transformers, cls).from_pretrained(out).eval()
        result["transformers"] = transformers.__version__
    except ImportError:
        result["transformers"] = "not installed"
    with torch.no_grad():
        if source.image_config is not None:
            cfg = source.image_config
            pixels = rng.uniform(-1, 1, (2, 3, cfg.height, cfg.width)).astype(np.float32)
            a, ta = source.engine.encode_image(pixels, tokens=True)
            b, tb = written.engine.encode_image(pixels, tokens=True)
            result["image_roundtrip_max_abs"] = _max_abs(a, b) if a is not None else _max_abs(ta, tb)
            if ref is not None:
                vision = getattr(ref, "vision_model", ref)
                r = vision(pixel_values=torch.from_numpy(pixels))
                result["image_vs_transformers_max_abs"] = _max_abs(tb, r.last_hidden_state.numpy())
                if b is not None:  # CLIP's image embedding is the pooled output through `visual_projection`
                    pooled = getattr(ref, "visual_projection", lambda x: x)(r.pooler_output)
                    result["image_vs_transformers_max_abs"] = max(result["image_vs_transformers_max_abs"],
                                                                  _max_abs(b, pooled.numpy()))
        if source.tokenizer is not None:
            ids, _ = source.tokenize(PROBE_TEXTS)
            ids_out, _ = written.tokenize(PROBE_TEXTS)
            result["token_ids_equal"] = f"{int((ids == ids_out).all(axis=1).sum())}/{len(PROBE_TEXTS)}"
            result["text_roundtrip_max_abs"] = _max_abs(source.engine.encode_text(ids), written.engine.encode_text(ids))
            if ref is not None:
                text = getattr(ref, "text_model", ref)
                r = getattr(ref, "text_projection", lambda x: x)(text(input_ids=torch.from_numpy(ids)).pooler_output)
                r = r.numpy()
                result["text_vs_transformers_max_abs"] = _max_abs(written.engine.encode_text(ids), r)
    return result


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max())
