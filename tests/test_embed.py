"""`siglite embed` / `siglite search` on the tiny checkpoint: outputs against `Model.image_features` /
`text_features` row for row, every source kind, broken inputs, refusal of other settings, and resume after SIGKILL.

Embeddings are compared exactly (assert_array_equal) where the job's engine batches equal the reference call's
batches (shard size a multiple of the batch size, no failures before the row), else with atol 1e-6.
"""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import tarfile
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import siglite
from siglite.cli.main import main
from siglite.errors import SigliteError
from siglite.tasks.embed import embed, settings_hash
from siglite.tasks.search import open_store, search, top_k
from siglite.data.sources import expand_braces

pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install 'siglite[data]')")
import pyarrow.parquet as pq  # noqa: E402

ATOL = 1e-6


# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------


def _image(rng, h, w, mode="RGB") -> Image.Image:
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx * 3 + yy) % 256], -1)
    img = Image.fromarray(np.clip(base + rng.integers(-40, 40, base.shape), 0, 255).astype(np.uint8))
    return img.convert(mode) if mode != "RGB" else img


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def write_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n images of mixed sizes, modes and formats in nested folders; returns them sorted by path."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        sub = folder / f"d{i % 3}" / ("deep" if i % 4 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        mode, ext = [("RGB", "jpg"), ("RGB", "png"), ("L", "png"), ("RGBA", "png"), ("RGB", "JPEG")][i % 5]
        img = _image(rng, 20 + 7 * i, 60 - 3 * i, mode)
        path = sub / f"img{i:02d}.{ext}"
        img.save(path, "JPEG" if ext.lower().endswith(("jpg", "jpeg")) else "PNG")
        paths.append(path)
    (folder / "notes.txt").write_text("not an image extension: ignored")
    return sorted(paths, key=str)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def broken_files(folder: Path) -> dict[str, str]:
    """Writes one file of each broken kind; returns {file name: substring its reason must contain}."""
    rng = np.random.default_rng(7)
    jpg = _encode(_image(rng, 40, 50), "JPEG")
    png = _encode(_image(rng, 40, 50), "PNG")
    i = png.index(b"IDAT")
    n = struct.unpack(">I", png[i - 4:i])[0]
    garbled = bytearray(png[i + 4:i + 4 + n])
    garbled[2:40] = bytes(38)  # chunk CRCs stay valid: only the zlib stream is broken
    huge_ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    files = {
        "truncated.jpg": (jpg[:len(jpg) // 2], "truncated"),
        "empty.jpg": (b"", "empty file (0 bytes)"),
        "signature_only.png": (png[:8], "not a recognised image format"),
        "notes.jpg": (b"this is a text file, not a picture\n", "not a recognised image format"),
        "corrupt.png": (png[:i - 4] + _png_chunk(b"IDAT", bytes(garbled)) + png[i + 8 + n:], "cannot decode"),
        "huge.png": (png[:8] + _png_chunk(b"IHDR", huge_ihdr) + _png_chunk(b"IDAT", zlib.compress(bytes(10)))
                     + _png_chunk(b"IEND", b""), "pixel limit"),
        "photo.heic": (struct.pack(">I", 24) + b"ftypheic\0\0\0\0heicmif1" + bytes(64), "not a recognised image"),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    os.symlink(folder / "gone" / "missing.jpg", folder / "dangling.jpg")
    return {**{name: reason for name, (_, reason) in files.items()}, "dangling.jpg": "no such file"}


def read_output(out: Path, emb_dir: str = "img_emb") -> tuple[np.ndarray, dict, list[dict], dict]:
    """(all embeddings, all metadata columns, errors, manifest) of an output folder, shards concatenated."""
    manifest = json.loads((out / "manifest.json").read_text())
    parts = sorted((out / emb_dir).glob("part-*.npy"))
    assert [p.stem for p in parts] == [f"part-{k:05d}" for k in range(manifest["shards"])]
    emb = np.concatenate([np.load(p) for p in parts])
    meta = pa.concat_tables([pq.read_table(out / "metadata" / f"{p.stem}.parquet") for p in parts]).to_pydict()
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    return emb, meta, errors, manifest


@pytest.fixture(scope="module")
def model(tiny_spiece):
    return siglite.load(tiny_spiece, device="cpu")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[Path, list[Path]]:
    folder = tmp_path_factory.mktemp("photos")
    return folder, write_images(folder, 10)


# --------------------------------------------------------------------------------------------------------------------
# Sources and outputs
# --------------------------------------------------------------------------------------------------------------------


def test_folder_matches_image_features(model, images, tmp_path):
    folder, paths = images
    record = embed(model, folder, tmp_path / "out", shard_size=4, batch_size=2, workers=2, progress=False)
    emb, meta, errors, manifest = read_output(tmp_path / "out")

    np.testing.assert_array_equal(emb, model.image_features(paths, batch_size=2))
    assert meta["source"] == [str(p) for p in paths]
    assert meta["key"] == [p.relative_to(folder).as_posix() for p in paths]
    assert meta["id"] == list(range(len(paths)))
    assert [(w, h) for w, h in zip(meta["width"], meta["height"])] == [Image.open(p).size for p in paths]
    assert errors == []
    assert record["embedded"] == record["items"] == len(paths) and record["shards_run"] == 3
    assert manifest["complete"] and manifest["counts"] == {"items": 10, "embedded": 10, "errors": 0, "shards": 3}
    assert manifest["dims"] == {"emb": [32], "tokens": None}
    assert (manifest["engine"], manifest["precision"], manifest["modality"]) == ("torch", "float32", "image")
    assert manifest["preprocess"]["mode"] == "resize" and manifest["preprocess"]["image"]["height"] == 34
    assert manifest["siglite_version"] == siglite.__version__
    assert manifest["settings_hash"] == settings_hash(manifest["settings"])
    assert not list((tmp_path / "out").rglob(".*.tmp-*"))


def test_tokens_float16_letterbox(model, images, tmp_path):
    folder, paths = images
    embed(model, folder, tmp_path / "out", shard_size=5, batch_size=5, tokens=True, dtype="float16",
          preprocess="letterbox", progress=False)
    emb, _, _, manifest = read_output(tmp_path / "out")
    tokens = np.concatenate([np.load(p) for p in sorted((tmp_path / "out" / "tokens").glob("*.npy"))])
    ref_pooled = model.image_features(paths, batch_size=5, preprocess="letterbox")
    ref_tokens = model.image_features(paths, batch_size=5, preprocess="letterbox", tokens=True)
    assert emb.dtype == tokens.dtype == np.float16
    np.testing.assert_array_equal(emb, ref_pooled.astype(np.float16))
    np.testing.assert_array_equal(tokens, ref_tokens.astype(np.float16))
    assert manifest["dims"] == {"emb": [32], "tokens": list(ref_tokens.shape[1:])}


def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_webdataset_tars(model, tmp_path):
    rng = np.random.default_rng(3)
    blobs = {f"{i:06d}": _encode(_image(rng, 30 + i, 40), "JPEG" if i % 2 else "PNG") for i in range(7)}
    ext = {k: "jpg" if int(k) % 2 else "png" for k in blobs}
    _tar(tmp_path / "shard-00000.tar", [m for k in list(blobs)[:4] for m in
                                        ((f"{k}.json", b"{}"), (f"{k}.{ext[k]}", blobs[k]), (f"{k}.txt", b"cap"))])
    _tar(tmp_path / "shard-00001.tar", [(f"{k}.{ext[k]}", blobs[k]) for k in list(blobs)[4:]]
         + [("nopic.json", b"{}"), ("nopic.txt", b"x"), ("broken.jpg", b"\xff\xd8\xff garbage")])

    embed(model, tmp_path / "shard-{00000..00001}.tar", tmp_path / "out", shard_size=3, batch_size=3,
          progress=False)
    emb, meta, errors, _ = read_output(tmp_path / "out")

    assert meta["key"] == list(blobs)
    assert meta["source"][0] == f"{tmp_path / 'shard-00000.tar'}/000000.png"
    np.testing.assert_allclose(emb, model.image_features(list(blobs.values())), atol=ATOL, rtol=0)
    assert [(e["key"], e["id"]) for e in errors] == [("nopic", 7), ("broken", 8)]
    assert "no image member (members: json, txt)" in errors[0]["reason"]
    assert "not a recognised image format" in errors[1]["reason"]


def test_parquet_bytes_and_paths(model, images, tmp_path):
    folder, paths = images
    blobs = [p.read_bytes() for p in paths]
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(len(paths))], "jpg": blobs}), tmp_path / "bytes.parquet",
                   row_group_size=3)
    embed(model, tmp_path / "bytes.parquet", tmp_path / "out_bytes", shard_size=4, batch_size=2, progress=False)
    emb, meta, errors, _ = read_output(tmp_path / "out_bytes")
    np.testing.assert_array_equal(emb, model.image_features(paths, batch_size=2))
    assert meta["key"] == [f"k{i}" for i in range(len(paths))] and errors == []

    struct = pa.array([{"bytes": b, "path": None} for b in blobs[:3]] + [{"bytes": None, "path": "x.png"}])
    pq.write_table(pa.table({"image": struct}), tmp_path / "hf.parquet")  # 🤗 datasets' Image feature layout
    embed(model, tmp_path / "hf.parquet", tmp_path / "out_hf", progress=False)
    emb, meta, errors, _ = read_output(tmp_path / "out_hf")
    np.testing.assert_allclose(emb, model.image_features(paths[:3]), atol=ATOL, rtol=0)
    assert meta["key"] == ["0", "1", "2"]
    assert [(e["id"], e["reason"]) for e in errors] == [(3, "no image bytes in column 'image'")]

    rel = [os.path.relpath(p, tmp_path) for p in paths] + ["missing.png"]
    pq.write_table(pa.table({"image_path": rel}), tmp_path / "paths.parquet")
    embed(model, tmp_path / "paths.parquet", tmp_path / "out_paths", shard_size=4, batch_size=2, progress=False)
    emb, meta, errors, _ = read_output(tmp_path / "out_paths")
    np.testing.assert_array_equal(emb, model.image_features(paths, batch_size=2))
    assert meta["source"] == [str(p) for p in paths]
    assert [(e["id"], e["reason"]) for e in errors] == [(len(paths), "no such file")]


def test_list_file_and_glob(model, images, tmp_path):
    folder, paths = images
    chosen = paths[::3]
    (tmp_path / "list.txt").write_text("# my picks\n" + "\n".join(str(p) for p in reversed(chosen)) + "\n\n")
    embed(model, tmp_path / "list.txt", tmp_path / "out_list", progress=False)
    emb, meta, _, _ = read_output(tmp_path / "out_list")
    assert meta["source"] == [str(p) for p in reversed(chosen)]  # a list keeps its own order
    np.testing.assert_allclose(emb, model.image_features(list(reversed(chosen))), atol=ATOL, rtol=0)

    embed(model, f"{folder}/**/*.png", tmp_path / "out_glob", progress=False)
    _, meta, _, _ = read_output(tmp_path / "out_glob")
    assert meta["source"] == sorted(str(p) for p in paths if p.suffix == ".png")


def test_expand_braces():
    assert expand_braces("s-{008..011}.tar") == ["s-008.tar", "s-009.tar", "s-010.tar", "s-011.tar"]
    assert expand_braces("{a,b}/{1..2}.tar") == ["a/1.tar", "a/2.tar", "b/1.tar", "b/2.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    assert expand_braces("odd{x}-{1,2}.tar") == ["odd{x}-1.tar", "odd{x}-2.tar"]


def test_text_file(model, tmp_path):
    lines = ["a photo of a cat", "", "A DOG, running!", "   ", "ünïcödé café 東京", "x"]
    (tmp_path / "captions.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    record = embed(model, tmp_path / "captions.txt", tmp_path / "out", text=True, shard_size=2, batch_size=2,
                   progress=False)
    emb, meta, errors, manifest = read_output(tmp_path / "out", "text_emb")
    texts = [t for t in lines if t.strip()]
    np.testing.assert_array_equal(emb, model.text_features(texts, batch_size=2))
    assert meta == {"id": [0, 1, 2, 3], "line": [1, 3, 5, 6], "caption": texts}
    assert errors == [] and record["modality"] == manifest["modality"] == "text"
    assert manifest["tokenizer"] == model.tokenizer.settings()


# --------------------------------------------------------------------------------------------------------------------
# Nothing lost
# --------------------------------------------------------------------------------------------------------------------


def test_broken_files_are_listed_once(model, tmp_path):
    good = write_images(tmp_path / "in", 6, seed=5)
    expected = broken_files(tmp_path / "in")
    record = embed(model, tmp_path / "in", tmp_path / "out", shard_size=4, batch_size=3, progress=False)
    emb, meta, errors, manifest = read_output(tmp_path / "out")

    assert meta["source"] == [str(p) for p in good]
    np.testing.assert_allclose(emb, model.image_features(good), atol=ATOL, rtol=0)
    by_name = {Path(e["source"]).name: e for e in errors}
    assert len(errors) == len(by_name) == len(expected), [e["source"] for e in errors]
    for name, reason in expected.items():
        assert reason in by_name[name]["reason"], (name, by_name[name]["reason"])
        assert "\n" not in by_name[name]["reason"]
    assert set(meta["id"]).isdisjoint(e["id"] for e in errors)
    assert sorted([*meta["id"], *(e["id"] for e in errors)]) == list(range(len(good) + len(expected)))
    assert record["errors"] == manifest["counts"]["errors"] == len(expected)


def test_refuses_other_settings(model, images, tiny_gemma, tmp_path, capsys):
    folder, _ = images
    out = tmp_path / "out"
    embed(model, folder, out, shard_size=4, progress=False)
    again = embed(model, folder, out, shard_size=4, batch_size=3, workers=1, progress=False)  # speed knobs: fine
    assert again["shards_run"] == 0 and again["embedded"] == 10

    with pytest.raises(SigliteError, match=r"other settings \(preprocess: 'resize' there, 'letterbox' now\)"):
        embed(model, folder, out, shard_size=4, preprocess="letterbox", progress=False)
    with pytest.raises(SigliteError, match=r"other settings \(model: "):
        embed(siglite.load(tiny_gemma, device="cpu"), folder, out, shard_size=4, progress=False)
    with pytest.raises(SigliteError, match=r"other settings \(normalize: False there, True now\)"):
        embed(model, folder, out, shard_size=4, normalize=True, progress=False)

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    assert main(["embed", str(folder), "--model", str(model.folder), "--out", str(tmp_path / "other"),
                 "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is not empty and has no manifest.json" in err


DRIVER = textwrap.dedent("""
    import os, sys, time
    import siglite
    from siglite.tasks.embed import embed

    model = siglite.load(sys.argv[1], device="cpu")
    engine_call = model.engine.encode_image

    def slow(*args, **kwargs):  # a job slow enough to be killed at chosen points
        time.sleep(0.15)
        return engine_call(*args, **kwargs)

    model.engine.encode_image = slow
    while not os.path.exists(sys.argv[4]):  # imports are done; wait for the go
        time.sleep(0.01)
    embed(model, sys.argv[2], sys.argv[3], shard_size=3, batch_size=2, workers=2, progress=False)
""")


def _done(out: Path) -> list[Path]:
    return sorted((out / "done").glob("*.json")) if (out / "done").is_dir() else []


def _kill_when(proc: subprocess.Popen, go: Path, out: Path, min_done: int, extra_wait: float) -> None:
    go.touch()
    try:
        deadline = time.monotonic() + 90
        while len(_done(out)) < min_done:
            assert proc.poll() is None, f"job ended before it was killed: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "job made no progress"
            time.sleep(0.02)
        time.sleep(extra_wait)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()


def test_resume_after_sigkill_is_bit_identical(model, tmp_path):
    good = write_images(tmp_path / "in", 13, seed=2)
    (tmp_path / "in" / "d1" / "bad.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "driver.py").write_text(DRIVER)
    out = tmp_path / "out"
    # Both jobs start now so that the second one's imports overlap the first one's run; each waits for its go file.
    procs = [subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(model.folder), str(tmp_path / "in"),
                               str(out), str(tmp_path / f"go{i}")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for i in range(2)]
    try:
        # 14 items, shards of 3 -> 5 shards of 2 engine batches. Kill once shard 1 is done, then mid-shard once 3 are.
        _kill_when(procs[0], tmp_path / "go0", out, min_done=1, extra_wait=0.0)
        _kill_when(procs[1], tmp_path / "go1", out, min_done=3, extra_wait=0.2)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert 3 <= len(_done(out)) < 5, "the second kill should land before the end"
    before = {p.name: p.stat().st_mtime_ns for p in (out / "img_emb").glob("*.npy")
              if (out / "done" / f"{p.stem}.json").is_file()}

    record = embed(model, tmp_path / "in", out, shard_size=3, batch_size=2, workers=2, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in (out / "img_emb").glob("*.npy")}
    assert all(after[name] == t for name, t in before.items()), "a finished shard was recomputed"
    assert record["shards_run"] == 5 - len(before)

    embed(model, tmp_path / "in", tmp_path / "ref", shard_size=3, batch_size=2, workers=2, progress=False)
    emb, meta, errors, manifest = read_output(out)
    ref_emb, ref_meta, ref_errors, ref_manifest = read_output(tmp_path / "ref")
    assert meta["source"] == [str(p) for p in good]  # exactly the readable images, once each
    assert len(set(meta["id"])) == len(meta["id"]) == len(good)
    assert errors == ref_errors and len(errors) == 1 and errors[0]["source"].endswith("bad.jpg")
    assert meta == ref_meta
    assert emb.tobytes() == ref_emb.tobytes()
    for k in range(manifest["shards"]):
        name = f"part-{k:05d}.npy"
        assert (out / "img_emb" / name).read_bytes() == (tmp_path / "ref" / "img_emb" / name).read_bytes()
    assert manifest["complete"] and manifest == ref_manifest
    assert not list(out.rglob(".*.tmp-*"))


# --------------------------------------------------------------------------------------------------------------------
# CLI and search
# --------------------------------------------------------------------------------------------------------------------


def test_cli_embed_then_search(model, images, tmp_path, capsys):
    folder, paths = images
    out = tmp_path / "out"
    assert main(["embed", str(folder), "--model", str(model.folder), "--out", str(out), "--device", "cpu",
                 "--shard-size", "4", "--no-progress", "--format", "json"]) == 0
    record = json.loads(capsys.readouterr().out)[0]
    assert (record["embedded"], record["errors"], record["shards"]) == (10, 0, 3)

    emb, _, _, _ = read_output(out)
    store = open_store(out)
    hits = top_k(store, emb[6], k=3)
    assert (hits[0][1], hits[0][2]) == (1, 2) and hits[0][0] == pytest.approx(1.0, abs=1e-6)  # row 6 = shard 1, row 2
    cos = emb @ emb[6] / np.linalg.norm(emb, axis=1) / np.linalg.norm(emb[6])
    assert [s for s, _, _ in hits] == pytest.approx(sorted(cos, reverse=True)[:3], abs=1e-6)

    assert main(["search", str(out), "--image", str(paths[6]), "--model", str(model.folder), "--device", "cpu",
                 "--top", "3", "--format", "json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found[0]["source"] == str(paths[6]) and [r["rank"] for r in found] == [1, 2, 3]
    assert "prob" not in found[0]  # image against images: cosine only

    text_hits = search(model, out, text="a red car", top=10)
    q = model.text_features(["a red car"])[0]
    cos = emb @ q / np.linalg.norm(emb, axis=1) / np.linalg.norm(q)
    assert [h["id"] for h in text_hits] == list(np.argsort(-cos, kind="stable"))
    probs = 1 / (1 + np.exp(-model.logits(emb, q[None])[:, 0]))
    np.testing.assert_allclose([h["prob"] for h in text_hits], probs[np.argsort(-cos, kind="stable")], atol=1e-6)

    with pytest.raises(SigliteError, match="no manifest.json"):
        search(model, tmp_path, text="x")
