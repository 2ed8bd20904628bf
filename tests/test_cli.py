"""The CLI: thin wiring over the library, JSON output equal to the API, one-line errors with a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import siglite
from siglite.cli.main import main


def _json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_list_json(capsys):
    rows = _json(capsys, ["list", "--format", "json"])
    so400m = next(r for r in rows if r["name"] == "siglip-so400m-patch14-384")
    assert so400m["tokens"] == 729 and so400m["width"] == 1152


def test_info(capsys, tiny_spiece):
    info = _json(capsys, ["info", "--model", str(tiny_spiece), "--format", "json"])
    assert info["vision_config"]["patch_size"] == 7
    assert info["tokenizer"]["max_length"] == 16
    assert info["image"]["height"] == 34


def test_classify_matches_api(capsys, tiny_spiece, sample_images):
    paths = [str(p) for p in sample_images[:2]]
    rows = _json(capsys, ["classify", *paths, "--model", str(tiny_spiece), "--labels", "cat", "dog", "car",
                          "--format", "json"])
    model = siglite.load(tiny_spiece)
    probs = model.classify(paths, ["cat", "dog", "car"])
    assert [r["image"] for r in rows] == paths
    for i, row in enumerate(rows):  # one record per image, labels best first, as transformers' pipeline returns
        scores = [x["score"] for x in row["labels"]]
        assert scores == sorted(scores, reverse=True) and len(scores) == 3
        for x in row["labels"]:
            assert x["score"] == pytest.approx(float(probs[i, ["cat", "dog", "car"].index(x["label"])]), abs=1e-6)
    assert model.classify(paths, ["cat", "dog", "car"], top_k=3) == [r["labels"] for r in rows]


def test_classify_table_and_top(capsys, tiny_spiece, sample_images):
    assert main(["classify", str(sample_images[0]), "--model", str(tiny_spiece), "--labels", "a", "b", "c",
                 "--top", "1", "--preprocess", "letterbox"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].split() == ["image", "label", "probability"] and len(out) == 2


def test_encode_images_and_tokens_and_text(tmp_path, capsys, tiny_spiece, sample_images):
    model = siglite.load(tiny_spiece)
    paths = [str(p) for p in sample_images]
    assert main(["encode", *paths, "--model", str(tiny_spiece), "--out", str(tmp_path / "img.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "img.npy"), model.image_features(paths), atol=1e-6)
    assert main(["encode", paths[0], "--model", str(tiny_spiece), "--out", str(tmp_path / "tok.npy"), "--tokens"]) == 0
    assert np.load(tmp_path / "tok.npy").shape == (1, 16, 32)
    assert main(["encode", "--text", "a cat", "a dog", "--model", str(tiny_spiece), "--out", str(tmp_path / "t.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "t.npy"), model.text_features(["a cat", "a dog"]), atol=1e-6)


def test_bad_image_is_one_line_error(tmp_path, capsys, tiny_spiece):
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not an image")
    assert main(["classify", str(bad), "--model", str(tiny_spiece), "--labels", "cat"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "notes.jpg" in err and err.startswith("siglite classify: error:")


def test_missing_model_is_one_line_error(tmp_path, capsys):
    assert main(["info", "--model", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no such folder" in err


def test_encode_needs_images_or_text(capsys, tiny_spiece, tmp_path):
    assert main(["encode", "--model", str(tiny_spiece), "--out", str(tmp_path / "x.npy")]) == 1
    assert "give image files or --text" in capsys.readouterr().err


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "siglite.cli.main", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "examples:" in out.stdout and "classify" in out.stdout
