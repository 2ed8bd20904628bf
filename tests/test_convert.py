"""`siglite convert`: every layout siglite loads -> a hub-layout folder that transformers 4.x, 5.x and siglite load.

Round trip through siglite is exact (|Δ| = 0); transformers 5.x (installed) on the written folder ≤ 1e-4; transformers
4.x on it (a separate venv, SIGLITE_TF4_PYTHON, default /work/refenv-tf4/bin/python) ≤ 1e-4 with identical token ids.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import siglite
from siglite.checkpoints import open_clip as oc
from siglite.checkpoints.layout import PREPROCESSOR, PROCESSOR
from siglite.errors import SigliteError
from siglite.tasks.convert import convert

FIXTURES = Path(__file__).parent / "fixtures"
TF4_PYTHON = os.environ.get("SIGLITE_TF4_PYTHON", "/work/refenv-tf4/bin/python")
TEXTS = ["a photo of a cat", "A DOG, running!", "", "ünïcödé café 東京", "word " * 30]  # = reference/tf4_outputs.py
SOURCES = ["tiny_spiece", "tiny_gemma", "tf4-siglip-spiece", "tf4-siglip-gemma", "tf4-vision-only",
           "open_clip-siglip", "open_clip-siglip2", "text-only-5x"]
QUICK = {"tiny_spiece", "tf4-siglip-gemma", "tf4-vision-only", "open_clip-siglip2", "text-only-5x"}  # the rest: slow
ATOL = 1e-4


@pytest.fixture(autouse=True)
def tiny_timm_sizes(monkeypatch):
    from test_open_clip import TINY_SIZES

    for size, row in TINY_SIZES.items():
        monkeypatch.setitem(oc.TIMM_SIGLIP_SIZES, size, row)


_CONVERTED: dict = {}


def _converted(name, request, tmp_path_factory):
    """`name` converted once per session: (source folder, output folder, parity record)."""
    if name not in _CONVERTED:
        from conftest import make_checkpoint

        root = tmp_path_factory.mktemp(f"convert-{name}")
        if name.startswith("tiny_"):
            src = request.getfixturevalue(name)
        elif name == "text-only-5x":
            src = make_checkpoint(root / "src-text", towers="text")
        else:
            src = FIXTURES / name
        _CONVERTED[name] = (src, root / "out", convert(src, root / "out"))
    return _CONVERTED[name]


@pytest.fixture
def converted(request, tmp_path_factory):
    return lambda name: _converted(name, request, tmp_path_factory)


@pytest.mark.parametrize("name", [n if n in QUICK else pytest.param(n, marks=pytest.mark.slow) for n in SOURCES])
def test_convert_round_trip_and_transformers_5(name, converted):
    src, out, record = converted(name)
    print(name, record)
    vision = record.get("image_roundtrip_max_abs") is not None
    if vision:
        assert (out / PREPROCESSOR).is_file() and (out / PROCESSOR).is_file()
        assert record["image_roundtrip_max_abs"] == 0.0
        assert record["image_vs_transformers_max_abs"] <= ATOL
    if "text_roundtrip_max_abs" in record:
        assert record["text_roundtrip_max_abs"] == 0.0
        assert record["text_vs_transformers_max_abs"] <= ATOL
        if not name.startswith("open_clip"):  # open_clip's text cleaning has no hub-layout equivalent (see notes)
            assert record["token_ids_equal"] == f"{len(siglite.tasks.convert.PROBE_TEXTS)}/" \
                                                f"{len(siglite.tasks.convert.PROBE_TEXTS)}"
    assert vision or "text_roundtrip_max_abs" in record
    again = siglite.load(out, engine="torch", device="cpu")
    assert (again.image_config is None) == (not vision)


def test_convert_open_clip_clip(tmp_path):
    """An open_clip CLIP folder becomes a transformers CLIPModel folder: round trip exact, CLIPModel's projected
    embeddings equal siglite's; the tokenizer difference (padding, html) is noted."""
    record = convert(FIXTURES / "open_clip-clip", tmp_path / "out")
    print(record)
    assert record["image_roundtrip_max_abs"] == 0.0 and record["text_roundtrip_max_abs"] == 0.0
    assert record["image_vs_transformers_max_abs"] <= ATOL and record["text_vs_transformers_max_abs"] <= ATOL
    assert "pads with 0" in record["notes"]
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "clip"


@pytest.mark.slow
def test_transformers_4_loads_the_converted_folders(converted, tmp_path):
    """The written folders load in transformers 4.x (model, image processor, tokenizer, processor) with the same ids
    and outputs as siglite on them."""
    if not Path(TF4_PYTHON).is_file():
        pytest.skip(f"no transformers 4.x interpreter at {TF4_PYTHON} (set SIGLITE_TF4_PYTHON)")
    from siglite.preprocess.image import preprocess_batch

    names = SOURCES
    folders = [str(converted(n)[1]) for n in names]
    npz = tmp_path / "tf4.npz"
    proc = subprocess.run([TF4_PYTHON, str(Path(__file__).parent / "reference" / "tf4_outputs.py"), str(npz), *folders],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr.strip().splitlines()[-1]
    ref = np.load(npz)
    image = np.random.default_rng(0).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    for i, name in enumerate(names):
        model = siglite.load(folders[i], engine="torch", device="cpu")
        if f"{i}_pixels" in ref:
            pixels, _, _ = preprocess_batch([image], model.image_config, "resize")
            d_pix = float(np.abs(pixels - ref[f"{i}_pixels"]).max())
            d_img = float(np.abs(model.engine.encode_image(ref[f"{i}_pixels"])[0] - ref[f"{i}_image"]).max())
            print(f"{name}: transformers {ref['version']} pixels |Δ| {d_pix:.2e}, image pooled |Δ| {d_img:.2e}")
            assert d_pix <= 1e-5 and d_img <= ATOL
        if f"{i}_ids" in ref:
            ids, _ = model.tokenize(TEXTS)
            np.testing.assert_array_equal(ids, ref[f"{i}_ids"], err_msg=name)
            d_txt = float(np.abs(model.text_features(TEXTS) - ref[f"{i}_text"]).max())
            print(f"{name}: transformers {ref['version']} text pooled |Δ| {d_txt:.2e}")
            assert d_txt <= ATOL


def test_refuses_to_overwrite(converted, tiny_spiece):
    _, out, _ = converted("tiny_spiece")
    with pytest.raises(SigliteError, match="already exists .*--overwrite"):
        convert(tiny_spiece, out)
    record = convert(tiny_spiece, out, overwrite=True)
    assert record["image_roundtrip_max_abs"] == 0.0


def test_cli_convert_and_one_line_errors(tiny_spiece, tmp_path, capsys):
    from siglite.cli.main import main

    out = tmp_path / "hub"
    assert main(["convert", str(tiny_spiece), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "image_roundtrip_max_abs" in printed and "0.00e+00" in printed
    assert main(["convert", str(tiny_spiece), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("siglite convert: error:") and "--overwrite" in err and "\n" not in err
    assert main(["convert", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 1
    assert "no such folder" in capsys.readouterr().err
