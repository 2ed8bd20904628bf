"""siglite.tasks.evaluate and .datasets: metrics against hand-computed values, the readers on files written here, and
the evaluators end to end on the tiny random checkpoint (cross-checked against the public Model API)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import siglite
from siglite.cli.main import main
from siglite.errors import SigliteError
from siglite.data import datasets as ds
from siglite.tasks.evaluate import (class_embeddings, cosine_rows, fidelity, fidelity_markdown, mean_per_class_recall,
                                    mse_rows, recall_at_k, retrieval, summarize, text_fidelity, topk_accuracy,
                                    zero_shot)

# -- metric helpers vs hand-computed values ---------------------------------------------------------------------------


def test_cosine_rows_hand_values():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
    b = np.array([[0.0, 1.0], [2.0, 2.0], [4.0, 3.0], [0.0, 0.0], [-1.0, 0.0]])
    np.testing.assert_allclose(cosine_rows(a, b), [0.0, 1.0, 24 / 25, 1.0, -1.0])
    # (N, T, D) rows are flattened per image, as the seed measures last_hidden_state
    t1 = np.array([[[1.0, 0.0], [0.0, 1.0]]])
    t2 = np.array([[[1.0, 0.0], [0.0, -1.0]]])
    np.testing.assert_allclose(cosine_rows(t1, t2), [0.0])
    with pytest.raises(ValueError, match="shapes differ"):
        cosine_rows(a, b[:, :1])


def test_mse_rows_hand_values():
    a = np.array([[1.0, 2.0], [0.0, 0.0]])
    b = np.array([[1.0, 4.0], [1.0, -1.0]])
    np.testing.assert_allclose(mse_rows(a, b), [2.0, 1.0])
    np.testing.assert_allclose(mse_rows(np.ones((1, 2, 2)), np.zeros((1, 2, 2))), [1.0])


def test_summarize_p1_is_first_percentile():
    s = summarize(np.arange(101.0))  # 0..100: the k-th percentile is k
    assert s == {"mean": 50.0, "min": 0.0, "max": 100.0, "p1": 1.0, "p99": 99.0}
    s = summarize([4.0, 1.0, 3.0, 2.0])  # sorted 1,2,3,4: rank 0.01 * 3 = 0.03 -> 1 + 0.03 * (2 - 1)
    assert s["p1"] == pytest.approx(1.03) and s["mean"] == 2.5 and s["p99"] == pytest.approx(3.97)
    with pytest.raises(ValueError):
        summarize([])


def test_topk_accuracy_hand_values():
    scores = np.array([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    labels = [2, 0, 0]
    assert topk_accuracy(scores, labels, 1) == pytest.approx(1 / 3)  # only row 1
    assert topk_accuracy(scores, labels, 2) == pytest.approx(2 / 3)  # row 0's label is 2nd
    assert topk_accuracy(scores, labels, 3) == 1.0
    # ties rank the lower index first (stable), whatever the sort implementation
    assert topk_accuracy(np.array([[1.0, 1.0, 0.0]]), [1], 1) == 0.0
    assert topk_accuracy(np.array([[1.0, 1.0, 0.0]]), [0], 1) == 1.0


def test_mean_per_class_recall_hand_values():
    labels = [0, 0, 0, 1, 2, 2]
    preds = [0, 0, 1, 1, 2, 0]
    assert mean_per_class_recall(preds, labels) == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
    # a predicted class absent from the labels does not count as a class (sklearn balanced_accuracy_score)
    assert mean_per_class_recall([3, 1], [0, 1]) == pytest.approx(0.5)


def test_recall_at_k_hand_values():
    # image 0 has captions t0, t1; image 1 has t2. scores: (texts, images)
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]])
    pos = np.array([[True, False], [True, False], [False, True]])
    np.testing.assert_allclose(recall_at_k(scores, pos, 1), [1.0, 0.0, 1.0])  # text -> image
    # image -> text: image 0's best text is t0 (1 of its 2 captions), image 1's best is t1 (not its caption)
    np.testing.assert_allclose(recall_at_k(scores.T, pos.T, 1), [0.5, 0.0])
    np.testing.assert_allclose(recall_at_k(scores.T, pos.T, 2), [0.5, 1.0])  # image 0's top 2 = t0, t2
    np.testing.assert_allclose(recall_at_k(scores.T, pos.T, 10), [1.0, 1.0])  # k clipped to the candidates


def test_fidelity_markdown_seed_format():
    s = {}
    for prefix, vals in (("hidden_cosine", (0.991, 0.951, 0.997, 0.980)), ("hidden_mse", (0.087, 0.024, 0.471, 0.039)),
                         ("pooled_cosine", (0.5, 0.25, 1.0, 0.3)), ("pooled_mse", (0.0004, 0.0, 0.001, 0.0002))):
        s.update({f"{prefix}_{k}": v for k, v in zip(("mean", "min", "max", "p1"), vals)})
    md = fidelity_markdown(s).splitlines()
    assert md[2] == "| last_hidden_state | 0.991 ( 0.951 ~ 0.997 ), 0.980 | 0.087 ( 0.024 ~ 0.471 ), 0.039 |"
    assert md[3] == "| pooler_output | 0.500 ( 0.250 ~ 1.000 ), 0.300 | 4.00e-04 ( 0.000 ~ 0.001 ), 2.00e-04 |"
    s.update(top1_agreement=0.75, reference_acc1=0.5, reference_acc5=None, candidate_acc1=0.25, candidate_acc5=None)
    assert fidelity_markdown(s).splitlines()[-1] == "| 0.5000 / n/a | 0.2500 / n/a | 0.7500 |"


# -- readers ----------------------------------------------------------------------------------------------------------


def _image(path, seed, size=(40, 30)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def image_folder(tmp_path):
    """3 classes x 2 images, plus one broken .jpg in class 'cat' (the middle class, so a skipped image shifts the
    labels of every later one if the evaluator does not realign them)."""
    root = tmp_path / "folder"
    for c, name in enumerate(["cat", "dog", "car"]):
        (root / name).mkdir(parents=True)
        for i in range(2):
            _image(root / name / f"{i}.png", 10 * c + i)
    (root / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


def _write_cifar(root, n=10, names=("apple", "maple_tree", "bus", "cloud", "fox", "rose"), meta_field=True):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    data = {b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), b"fine_labels": [i % len(names)
                                                                                         for i in range(n)]}
    (root / "test").write_bytes(pickle.dumps(data))
    meta = {b"fine_label_names": [x.encode() for x in names]} if meta_field else {b"other": []}
    (root / "meta").write_bytes(pickle.dumps(meta))
    return data


def test_read_image_folder(image_folder, tmp_path):
    data = ds.read_image_folder(image_folder)
    assert data.classnames == ["car", "cat", "dog"]  # sorted folder names
    assert len(data) == 7 and data.labels == [0, 0, 1, 1, 1, 2, 2]
    assert [p.name for p in data.images if p.parent.name == "cat"] == ["0.png", "1.png", "broken.jpg"]
    (tmp_path / "names.txt").write_text("a car\n\na cat\na dog\n")
    assert ds.read_classification(image_folder, tmp_path / "names.txt").classnames == ["a car", "a cat", "a dog"]
    (tmp_path / "names.json").write_text(json.dumps({"cat": "kitty", "dog": "doggo", "car": "auto"}))
    assert ds.read_classification(image_folder, tmp_path / "names.json").classnames == ["auto", "kitty", "doggo"]
    (tmp_path / "short.json").write_text(json.dumps(["x", "y"]))
    with pytest.raises(SigliteError, match="2 class names for 3 classes"):
        ds.read_classification(image_folder, tmp_path / "short.json")
    with pytest.raises(SigliteError, match="no class sub-folders"):
        ds.read_image_folder(image_folder / "cat")


def test_read_cifar100(tmp_path):
    data = _write_cifar(tmp_path / "cifar-100-python")
    got = ds.read_classification(tmp_path)  # finds the cifar-100-python folder inside
    assert got.classnames[:2] == ["apple", "maple tree"]
    assert got.labels == data[b"fine_labels"] and len(got.images) == 10
    # row layout: R plane, G plane, B plane, each 32x32 row-major
    row = data[b"data"][3]
    np.testing.assert_array_equal(got.images[3][..., 1], row[1024:2048].reshape(32, 32))
    assert got.images[3].shape == (32, 32, 3) and got.images[3].dtype == np.uint8
    assert len(got.subset(4)) == 4 and got.subset(4).labels == [data[b"fine_labels"][i] for i in (0, 3, 6, 9)]


def test_cifar_errors_name_file_and_field(tmp_path):
    _write_cifar(tmp_path / "a", meta_field=False)
    with pytest.raises(SigliteError, match=r"meta: missing field 'fine_label_names'"):
        ds.read_cifar100(tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "test").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"fine_labels": [0, 1]}))
    with pytest.raises(SigliteError, match=r"test: field 'data' must be \(N, 3072\) uint8"):
        ds.read_cifar100(tmp_path / "b")

    class Evil:  # a pickle that would call a function on load is refused, not run
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "test").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(SigliteError, match="refusing to load builtins.print"):
        ds.read_cifar100(tmp_path / "c")


def test_read_templates_and_classnames(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps(["a photo of a {c}.", "a drawing of a {c}."]))
    assert ds.read_templates(tmp_path / "t.json") == ["a photo of a {c}.", "a drawing of a {c}."]
    (tmp_path / "d.json").write_text(json.dumps({"cifar100": ["{c}"], "imagenet1k": ["a {c}"]}))
    assert ds.read_templates(tmp_path / "d.json", "imagenet1k") == ["a {c}"]
    with pytest.raises(SigliteError, match="pick a template list with a key"):
        ds.read_templates(tmp_path / "d.json")
    (tmp_path / "bad.json").write_text(json.dumps(["no placeholder"]))
    with pytest.raises(SigliteError, match="bad.json: template 'no placeholder' has no"):
        ds.read_templates(tmp_path / "bad.json")
    (tmp_path / "c.json").write_text(json.dumps({"cifar100": ["apple", "bus"]}))  # CLIP_benchmark layout
    assert ds.read_classnames(tmp_path / "c.json") == ["apple", "bus"]


@pytest.fixture
def captions(tmp_path):
    """3 images with 2, 1 and 2 captions, as a JSONL and as a COCO captions JSON."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    caps = [["a red square", "red thing"], ["a blue sky"], ["green grass", "a lawn"]]
    for i in range(3):
        _image(imgs / f"{i}.png", 100 + i)
    (tmp_path / "caps.jsonl").write_text("\n".join(json.dumps({"image": f"imgs/{i}.png", "captions": c})
                                                  for i, c in enumerate(caps)) + "\n")
    coco = {"images": [{"id": 10 + i, "file_name": f"{i}.png"} for i in range(3)] + [{"id": 99, "file_name": "x.png"}],
            "annotations": [{"image_id": 10 + i, "caption": c} for i, cs in enumerate(caps) for c in cs]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    return tmp_path, caps


def test_read_retrieval(captions):
    root, caps = captions
    jl = ds.read_retrieval(root / "caps.jsonl")
    coco = ds.read_retrieval(root / "coco.json", images_root=root / "imgs")
    assert [it["captions"] for it in jl] == caps == [it["captions"] for it in coco]  # image 99 has no caption
    assert [it["image"] for it in jl] == [it["image"] for it in coco] == [root / "imgs" / f"{i}.png" for i in range(3)]
    (root / "bad.jsonl").write_text('{"image": "a.png", "captions": []}\n')
    with pytest.raises(SigliteError, match=r"bad.jsonl:1: field 'captions'"):
        ds.read_retrieval(root / "bad.jsonl")
    (root / "bad.json").write_text(json.dumps({"images": []}))
    with pytest.raises(SigliteError, match="bad.json: field 'annotations'"):
        ds.read_retrieval(root / "bad.json")


# -- evaluators end to end on the tiny checkpoint --------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tiny_spiece):
    return siglite.load(tiny_spiece, device="cpu")


def test_zero_shot_image_folder_matches_classify(model, image_folder):
    data = ds.read_image_folder(image_folder)
    rec = zero_shot(model, data)
    assert rec["n"] == 6 and rec["n_failed"] == 1 and "broken.jpg" in rec["failures"][0]
    assert rec["n_classes"] == 3 and rec["acc5"] is None  # fewer than 5 classes, as CLIP_benchmark (NaN there)
    good = [p for p in data.images if p.suffix == ".png"]
    labels = np.array([lab for p, lab in zip(data.images, data.labels) if p.suffix == ".png"])
    pred = model.classify(good, data.classnames).argmax(axis=1)  # the public API, one template
    assert rec["acc1"] == pytest.approx(np.mean(pred == labels))
    assert rec["mean_per_class_recall"] == pytest.approx(np.mean([np.mean(pred[labels == c] == c) for c in range(3)]))
    # labels set to the model's own predictions: a correct evaluator must report 100%, and 0% when shifted
    perfect = ds.LabelledImages(good, list(pred), data.classnames)
    assert zero_shot(model, perfect)["acc1"] == 1.0
    assert zero_shot(model, ds.LabelledImages(good, list((pred + 1) % 3), data.classnames))["acc1"] == 0.0


def test_class_embeddings_average_templates(model):
    templates = ["a photo of a {c}.", "a drawing of a {}."]
    got = class_embeddings(model, ["cat", "dog"], templates)
    for i, c in enumerate(["cat", "dog"]):
        e = model.text_features([t.format(c, c=c) for t in templates])
        e = (e / np.linalg.norm(e, axis=1, keepdims=True)).mean(0)
        np.testing.assert_allclose(got[i], e / np.linalg.norm(e), atol=1e-6)


def test_zero_shot_cifar(model, tmp_path):
    _write_cifar(tmp_path / "c", n=12)
    data = ds.read_classification(tmp_path / "c")
    rec = zero_shot(model, data, templates=["a photo of a {c}.", "{c}"], batch_size=5)
    assert rec["n"] == 12 and rec["n_failed"] == 0 and rec["n_templates"] == 2 and rec["n_classes"] == 6
    for k in ("acc1", "acc5", "mean_per_class_recall"):
        assert 0.0 <= rec[k] <= 1.0
    assert rec["acc5"] >= rec["acc1"]


def test_retrieval_against_brute_force(model, captions):
    root, caps = captions
    rec = retrieval(model, ds.read_retrieval(root / "caps.jsonl"), k=(1, 2, 10))
    img = model.image_features([root / "imgs" / f"{i}.png" for i in range(3)])
    texts = [c for cs in caps for c in cs]
    owner = [i for i, cs in enumerate(caps) for _ in cs]
    txt = model.text_features(texts)
    sim = (txt / np.linalg.norm(txt, axis=1, keepdims=True)) @ (img / np.linalg.norm(img, axis=1, keepdims=True)).T
    for k in (1, 2):
        t2i = np.mean([owner[t] in np.argsort(-sim[t])[:k] for t in range(len(texts))])
        i2t = np.mean([any(owner[t] == i for t in np.argsort(-sim[:, i])[:k]) for i in range(3)])
        assert rec[f"image_retrieval_recall@{k}"] == pytest.approx(t2i)
        assert rec[f"text_retrieval_recall@{k}"] == pytest.approx(i2t)
    assert rec["image_retrieval_recall@10"] == rec["text_retrieval_recall@10"] == 1.0
    coco = retrieval(model, ds.read_retrieval(root / "coco.json", root / "imgs"), k=(1, 2, 10))
    assert {k: v for k, v in coco.items()} == rec
    assert rec["n_images"] == 3 and rec["n_texts"] == 5


def test_fidelity_self_and_bf16(model, tiny_spiece, image_folder):
    data = ds.read_image_folder(image_folder)
    same = fidelity(model, model, data.images, data.labels, data.classnames, batch_size=4)
    assert same["n"] == 6 and same["n_failed"] == 1
    for out in ("hidden", "pooled"):
        assert same[f"{out}_cosine_min"] == pytest.approx(1.0, abs=1e-6)
        assert same[f"{out}_mse_max"] == 0.0
    assert same["top1_agreement"] == 1.0 and same["reference_acc1"] == same["candidate_acc1"]

    bf16 = siglite.load(tiny_spiece, device="cpu", dtype="bfloat16")
    rec = fidelity(model, bf16, data.images, per_image=True)
    for out in ("hidden", "pooled"):
        assert 0.99 < rec[f"{out}_cosine_min"] <= rec[f"{out}_cosine_p1"] <= rec[f"{out}_cosine_mean"] < 1.0
        assert rec[f"{out}_mse_mean"] > 0
    # the summary is the summary of the per-image values, which are cosine_rows of the two runs' outputs
    ref_h = model.image_features(data.images[:2], tokens=True)
    cand_h = bf16.image_features(data.images[:2], tokens=True)
    np.testing.assert_allclose(rec["per_image"]["hidden_cosine"][:2], cosine_rows(ref_h, cand_h), rtol=1e-6)
    assert rec["hidden_cosine_mean"] == pytest.approx(np.mean(rec["per_image"]["hidden_cosine"]))

    t = text_fidelity(model, bf16, ["a cat", "two dogs on grass"])
    assert t["n"] == 2 and 0.99 < t["text_cosine_min"] < 1.0
    assert "| text pooler_output |" in fidelity_markdown(t)


# -- CLI --------------------------------------------------------------------------------------------------------------


def _json_out(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_eval(tiny_spiece, image_folder, captions, tmp_path, capsys):
    m = ["--model", str(tiny_spiece), "--device", "cpu"]
    z = _json_out(capsys, ["eval", "zeroshot", *m, "--data", str(image_folder), "--format", "json",
                           "--out", str(tmp_path / "z.json")])
    assert z["n"] == 6 and z["n_failed"] == 1 and 0 <= z["acc1"] <= 1
    assert json.loads((tmp_path / "z.json").read_text())["acc1"] == z["acc1"]

    root, _ = captions
    r = _json_out(capsys, ["eval", "retrieval", *m, "--data", str(root / "coco.json"), "--images-root",
                           str(root / "imgs"), "--format", "json"])
    assert r["text_retrieval_recall@10"] == 1.0

    f = _json_out(capsys, ["eval", "fidelity", *m, "--precision", "float32", "--candidate-precision", "bfloat16",
                           "--data", str(image_folder), "--format", "json"])
    assert f["candidate"].endswith("(torch, bfloat16)") and 0.99 < f["hidden_cosine_mean"] < 1.0
    assert 0.0 <= f["top1_agreement"] <= 1.0

    assert main(["eval", "fidelity", *m, "--images", str(image_folder / "cat")]) == 0
    out = capsys.readouterr().out
    assert "| last_hidden_state | 1.000 ( 1.000 ~ 1.000 ), 1.000 | 0.000 (" in out

    assert main(["eval", "zeroshot", *m, "--data", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing: not a folder" in err


# -- the trained fixture (issue 3): evaluators give the expected numbers and catch a broken engine -------------------

TRAINED = Path(__file__).parent / "fixtures" / "trained-tiny"


@pytest.mark.skipif(not (TRAINED / "config.json").is_file(),
                    reason="tests/fixtures/trained-tiny (the trained fixture of issue 3) is not in the tree yet")
def test_trained_fixture_zero_shot_and_broken_engine(tmp_path, capsys):
    import torch

    from siglite.data.synthetic import write_folder

    held = write_folder(tmp_path / "held", n_per_class=2, seed=424242)["folder"]  # a seed training never used
    rec = _json_out(capsys, ["eval", "zeroshot", "--model", str(TRAINED), "--device", "cpu", "--data", held,
                             "--classnames", f"{held}/classnames.txt", "--format", "json"])
    assert rec["n"] == 50 and rec["n_classes"] == 25 and rec["acc1"] >= 0.9

    good = siglite.load(TRAINED, device="cpu")
    broken = siglite.load(TRAINED, device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a broken engine: every vision MLP's input weights perturbed by their own scale
        for block in broken.engine.model.vision.blocks:
            w = block.mlp.fc1.weight
            w.add_(torch.randn(w.shape, generator=gen) * w.std())
    data = ds.read_classification(held, f"{held}/classnames.txt")
    fid = fidelity(good, broken, data.images, data.labels, data.classnames)
    assert fid["hidden_cosine_mean"] < 0.99 and fid["top1_agreement"] < 1.0
    assert fid["reference_acc1"] == pytest.approx(rec["acc1"])
    assert zero_shot(broken, data)["acc1"] < rec["acc1"]
