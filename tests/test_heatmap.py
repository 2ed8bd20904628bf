"""Heatmaps on the trained fixture: the text of a shape's class lights the patches where the shape is (one-shape
images), and one shape's text lights that shape rather than another (two-shape scenes); token statistics match the
tokens; the CLI writes a PNG and the array."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import siglite
from siglite.cli.main import main
from siglite.errors import SigliteError
from siglite.tasks.heatmap import patch_heatmap
from siglite.data.synthetic import generate_scenes

TRAINED = Path(__file__).parent / "fixtures" / "trained-tiny"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return siglite.load(TRAINED, device="cpu")


def _coverage(mask: np.ndarray, grid: int = 4) -> np.ndarray:
    """(H, W) shape coverage -> (grid, grid) fraction of each patch the shape covers."""
    p = mask.shape[0] // grid
    return mask.reshape(grid, p, grid, p).mean(axis=(1, 3))


def test_text_lights_the_shape_in_one_shape_images(model):
    scenes = generate_scenes(40, seed=21, image_size=32, min_shapes=1, max_shapes=1, radius=(0.2, 0.4))
    wins, n, gaps = 0, 0, []
    for s in scenes:
        shape = s.labels[0]
        cov = _coverage(s.masks[shape])
        fg, bg = cov > 0.5, cov == 0
        if not fg.any() or not bg.any():
            continue
        heat = patch_heatmap(model, s.image, f"{s.colours[shape]} {shape}")
        n += 1
        wins += heat[fg].mean() > heat[bg].mean()
        gaps.append(heat[fg].mean() - heat[bg].mean())
    print(f"shape patches hotter than background in {wins}/{n} images; mean gap {np.mean(gaps):.3f} cosine")
    assert n >= 30 and wins >= 0.8 * n


def test_text_picks_its_own_shape_in_two_shape_scenes(model):
    scenes = generate_scenes(40, seed=22, image_size=32, min_shapes=2, max_shapes=2, radius=(0.2, 0.3))
    wins = n = 0
    for s in scenes:
        a, b = s.labels
        ca, cb = _coverage(s.masks[a]), _coverage(s.masks[b])
        only_a, only_b = (ca > 0.5) & (cb < 0.1), (cb > 0.5) & (ca < 0.1)
        if not only_a.any() or not only_b.any():
            continue
        heat = patch_heatmap(model, s.image, f"{s.colours[a]} {a}")
        n += 1
        wins += heat[only_a].mean() > heat[only_b].mean()
    print(f"the named shape's patches hotter than the other shape's in {wins}/{n} scenes")
    assert n >= 20 and wins >= 0.8 * n


def test_token_statistics_match_the_tokens(model):
    image = generate_scenes(1, seed=3, image_size=32)[0].image
    tokens = model.image_features(image, tokens=True)[0]  # (16, 64)
    np.testing.assert_allclose(patch_heatmap(model, image), np.linalg.norm(tokens, axis=-1).reshape(4, 4), rtol=1e-6)
    np.testing.assert_allclose(patch_heatmap(model, image, mode="mean"), tokens.mean(-1).reshape(4, 4), atol=1e-6)
    first = model.image_features(image, tokens=True, layer=1)[0]
    np.testing.assert_allclose(patch_heatmap(model, image, layer=1), np.linalg.norm(first, axis=-1).reshape(4, 4),
                               rtol=1e-6)
    att = patch_heatmap(model, image, mode="attention")
    assert att.shape == (4, 4) and abs(att.sum() - 1) < 1e-5 and (att > 0).all()


def test_attention_mode_follows_the_shape(model):
    """The pooling head attends to the shape (what the pooled embedding is made of)."""
    scenes = generate_scenes(20, seed=23, image_size=32, min_shapes=1, max_shapes=1, radius=(0.2, 0.4))
    wins = n = 0
    for s in scenes:
        cov = _coverage(s.masks[s.labels[0]])
        fg, bg = cov > 0.5, cov == 0
        if fg.any() and bg.any():
            heat = patch_heatmap(model, s.image, mode="attention")
            n += 1
            wins += heat[fg].mean() > heat[bg].mean()
    print(f"attention: shape patches above background in {wins}/{n}")
    assert wins >= 0.9 * n


def test_cli_writes_png_and_array(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the plot extra (matplotlib) is not installed")
    s = generate_scenes(1, seed=4, image_size=32)[0]
    s.image.save(tmp_path / "img.png")
    out, npy = tmp_path / "map.png", tmp_path / "map.npy"
    shape = s.labels[0]
    assert main(["heatmap", str(tmp_path / "img.png"), "--model", str(TRAINED), "--device", "cpu", "--text",
                 f"{s.colours[shape]} {shape}", "--out", str(out), "--npy", str(npy), "--format", "json"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    model = siglite.load(TRAINED, device="cpu")
    np.testing.assert_allclose(np.load(npy), patch_heatmap(model, tmp_path / "img.png", f"{s.colours[shape]} {shape}"),
                               atol=1e-6)
    capsys.readouterr()
    assert main(["heatmap", str(tmp_path / "img.png"), "--model", str(TRAINED), "--out", str(out)]) == 1  # exists
    assert "--overwrite" in capsys.readouterr().err
    assert main(["heatmap", str(tmp_path / "nope.png"), "--model", str(TRAINED), "--out", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope.png" in err


def test_bad_options(model):
    image = generate_scenes(1, seed=3, image_size=32)[0].image
    with pytest.raises(SigliteError, match="empty"):
        patch_heatmap(model, image, "  ")
    with pytest.raises(SigliteError, match="mode"):
        patch_heatmap(model, image, mode="max")
    with pytest.raises(SigliteError, match="window"):
        patch_heatmap(model, image, "red circle", window=9)
