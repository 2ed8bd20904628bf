"""Fine-tuning heads: multi-label training on generated scenes beats chance on held-out data, the saved folder is a
real transformers `SiglipForImageClassification` (from_pretrained, same logits), bad images are skipped and listed,
single-label folders, predict (library and CLI), export of the classifier."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import siglite
from siglite.cli.main import main
from siglite.errors import SigliteError
from siglite.tasks.finetune import average_precision, finetune, multilabel_metrics, read_data
from siglite.data.synthetic import SHAPES, generate_scenes, write_folder, write_multilabel

TRAINED = Path(__file__).parent / "fixtures" / "trained-tiny"
ATOL = 1e-4
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scenes")
    write_multilabel(folder, 300, seed=1)
    return folder


@pytest.fixture(scope="module")
def probe(scenes, tmp_path_factory):
    """A linear probe on the trained fixture's tower, through the CLI (as a user runs it)."""
    out = tmp_path_factory.mktemp("probe") / "clf"
    assert main(["finetune", "--data", str(scenes / "labels.csv"), "--multi-label", "--init", str(TRAINED),
                 "--out", str(out), "--freeze-tower", "--head-lr", "1e-2", "--no-progress", "--device", "cpu"]) == 0
    return out


def _held_out_map(model, seed: int = 99, n: int = 100) -> tuple[float, float]:
    """(mAP of the model, mAP of chance = label prevalence) on freshly generated scenes."""
    fresh = generate_scenes(n, seed=seed, image_size=32)
    targets = np.array([[s in sc.labels for s in SHAPES] for sc in fresh], np.float32)
    probs = model.predict([sc.image for sc in fresh])
    return multilabel_metrics(probs, targets)["mAP"], float(targets.mean())


def test_linear_probe_learns_multilabel(probe):
    record = json.loads((probe / "finetune.json").read_text())
    before, after = record["before"]["mAP"], record["after"]["mAP"]
    model = siglite.load(probe, device="cpu")
    held, chance = _held_out_map(model)
    print(f"linear probe: validation mAP {before:.3f} (random head) -> {after:.3f}; fresh held-out mAP {held:.3f} "
          f"(chance {chance:.3f}); F1 micro/macro {record['after']['f1_micro']:.3f}/{record['after']['f1_macro']:.3f}")
    assert model.labels == list(SHAPES) and model.multi_label
    assert after > before + 0.1 and held > chance + 0.15


def test_full_finetune_improves_map(scenes, tmp_path):
    r = finetune(scenes / "labels.csv", tmp_path / "clf", init=TRAINED, multi_label=True, epochs=3, lr=1e-3,
                 head_lr=3e-3, batch_size=16, progress=False, device="cpu")
    held, chance = _held_out_map(siglite.load(tmp_path / "clf", device="cpu"))
    print(f"full fine-tune, 3 epochs: validation mAP {r.before['mAP']:.3f} -> {r.after['mAP']:.3f} "
          f"(best epoch {r.best_epoch}); fresh held-out mAP {held:.3f} (chance {chance:.3f})")
    assert r.after["mAP"] > r.before["mAP"] + 0.05 and held > chance + 0.1
    assert [h["epoch"] for h in r.history] == [1, 2, 3]
    assert r.best_epoch == max(r.history, key=lambda h: h["val"]["mAP"])["epoch"]  # the best epoch is what is kept


def test_transformers_loads_it_with_the_same_logits(probe):
    from transformers import AutoModelForImageClassification
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    ref, info = AutoModelForImageClassification.from_pretrained(probe, output_loading_info=True)
    assert type(ref).__name__ == "SiglipForImageClassification"
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert ref.config.problem_type == "multi_label_classification" and ref.config.id2label[0] == SHAPES[0]
    images = [sc.image for sc in generate_scenes(6, seed=5, image_size=32)]
    pixels = SiglipImageProcessorPil.from_pretrained(probe)(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = ref.eval()(pixels).logits
    model = siglite.load(probe, device="cpu")
    got = model.predict(images)
    worst = float(np.abs(got - torch.sigmoid(logits).numpy()).max())
    ours = model.engine.image_logits(pixels.numpy())
    worst_logits = float(np.abs(ours - logits.numpy()).max())
    print(f"classifier vs transformers from_pretrained: worst |diff| logits {worst_logits:.2e}, probs {worst:.2e}")
    assert worst_logits <= ATOL and worst <= ATOL


def test_bad_images_are_skipped_and_listed(scenes, tmp_path, capsys):
    csv = tmp_path / "labels.csv"
    lines = (scenes / "labels.csv").read_text().splitlines()[:41]
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    lines += ["broken.png,1,0,0,0,0", "missing.png,0,1,0,0,0"]
    csv.write_text("\n".join(lines[:1] + [f"{scenes}/{ln}" if ln.startswith("images/") else ln
                                          for ln in lines[1:]]) + "\n")
    # paths in the CSV are absolute for the scenes and relative (to the CSV) for the two bad ones
    out = tmp_path / "clf"
    code = main(["finetune", "--data", str(csv), "--multi-label", "--init", str(TRAINED), "--out", str(out),
                 "--freeze-tower", "--epochs", "3", "--no-progress", "--format", "json", "--val-fraction", "0.25"])
    captured = capsys.readouterr()
    assert code == 0
    record = json.loads(captured.out)
    assert sorted(Path(s["image"]).name for s in record["skipped"]) == ["broken.png", "missing.png"]
    assert "skipped" in captured.err and "broken.png" in captured.err and "missing.png" in captured.err
    assert record["n_train"] + record["n_val"] == 42
    assert siglite.load(out, device="cpu").predict([scenes / "images" / "00000.png"]).shape == (1, 5)


def test_refuses_to_overwrite(probe, scenes, capsys):
    code = main(["finetune", "--data", str(scenes / "labels.csv"), "--multi-label", "--init", str(TRAINED),
                 "--out", str(probe), "--freeze-tower", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "--overwrite" in err


def test_single_label_folder(tmp_path):
    write_folder(tmp_path / "shapes", 8, seed=3, jsonl=False)
    (tmp_path / "shapes" / "classnames.txt").unlink()
    r = finetune(tmp_path / "shapes", tmp_path / "clf", init=TRAINED, freeze_tower=True, epochs=100, head_lr=3e-2,
                 val_fraction=0.3, progress=False, device="cpu")
    print(f"single-label linear probe on 25 classes (5.6 train images each): acc1 {r.before['acc1']:.3f} -> "
          f"{r.after['acc1']:.3f} (chance 0.04)")
    assert not r.multi_label and r.after["acc1"] > 0.4
    model = siglite.load(tmp_path / "clf", device="cpu")
    probs = model.predict([tmp_path / "shapes" / "red_circle" / "00000.png"])
    assert probs.shape == (1, 25) and abs(probs.sum() - 1) < 1e-5  # softmax
    with pytest.raises(SigliteError, match="single-label"):
        read_data(tmp_path / "shapes", multi_label=True)


def test_predict_cli(probe, capsys):
    scene = generate_scenes(1, seed=7, image_size=32)[0]
    path = probe.parent / "one.png"
    scene.image.save(path)
    assert main(["predict", str(path), str(probe.parent / "nope.png"), "--model", str(probe), "--format", "json",
                 "--threshold", "0.3"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[1]["labels"] is None and set(rows[0]["probabilities"]) == set(SHAPES)
    assert all(rows[0]["probabilities"][lab] >= 0.3 for lab in rows[0]["labels"])
    assert main(["predict", str(path), "--model", str(probe)]) == 0
    assert "one.png" in capsys.readouterr().out


def test_csv_layouts(tmp_path):
    # the seed's Kaggle layout: image name, a free-text "Classes" column, then 0/1 columns
    (tmp_path / "a.csv").write_text("Image_Name,Classes,bus,car\nx.jpg,bus car,1,1\ny.jpg,car,0,1\n")
    ds = read_data(tmp_path / "a.csv", multi_label=True)
    assert ds.labels == ["bus", "car"] and ds.ignored_columns == ["Classes"] and ds.targets.tolist() == [[1, 1],
                                                                                                       [0, 1]]
    with pytest.raises(SigliteError, match="line 2 has 2 labels"):
        read_data(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("image,bus\nx.jpg,1,0\n")
    with pytest.raises(SigliteError, match="line 2 has 3 fields"):
        read_data(tmp_path / "b.csv")
    (tmp_path / "c.csv").write_text("image,notes\nx.jpg,hello\n")
    with pytest.raises(SigliteError, match="no label columns"):
        read_data(tmp_path / "c.csv")


def test_average_precision_matches_the_definition():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    positives = np.array([1, 0, 1, 0, 1])
    # precision at each hit: 1/1, 2/3, 3/5
    assert abs(average_precision(scores, positives) - (1 + 2 / 3 + 3 / 5) / 3) < 1e-12
    assert np.isnan(average_precision(scores, np.zeros(5)))


def test_exported_classifier_serves_the_same_logits(probe, tmp_path):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    pytest.importorskip("onnxscript", reason="the onnx extra (onnxscript, for export) is not installed")
    assert main(["export", "--model", str(probe), "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 0
    images = [sc.image for sc in generate_scenes(5, seed=8, image_size=32)]
    want = siglite.load(probe, device="cpu").predict(images)
    served = siglite.load(tmp_path / "onnx")
    got = served.predict(images)
    worst = float(np.abs(got - want).max())
    print(f"onnxruntime classifier: worst |diff| probabilities vs torch {worst:.2e}")
    assert served.labels == list(SHAPES) and worst <= ATOL


def test_quantized_classifier_reports_logit_fidelity(probe, scenes, tmp_path):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    pytest.importorskip("onnxscript", reason="the onnx extra (onnxscript, for export) is not installed")
    out = tmp_path / "int8"
    assert main(["quantize", "--model", str(probe), "--calib", str(scenes / "images"), "--out", str(out),
                 "--num-calib", "16", "--num-check", "8", "--sensitivity-samples", "0", "--format", "json"]) == 0
    runtime = json.loads((out / "quant_report.json").read_text())["fidelity"]["runtime"]
    assert "classifier logits" in (out / "quant_report.md").read_text()
    images = [sc.image for sc in generate_scenes(8, seed=9, image_size=32)]
    want = siglite.load(probe, device="cpu").predict(images)
    got = siglite.load(out).predict(images)
    print(f"INT8 classifier: logits cosine mean {runtime['logits']['mean']:.5f}, top-1 agreement "
          f"{runtime['logits_top1_agreement']:.3f}; worst |diff| probabilities vs fp32 {np.abs(got - want).max():.4f}")
    assert runtime["logits"]["mean"] > 0.99 and np.abs(got - want).max() < 0.05


def test_synth_multilabel(tmp_path, capsys):
    assert main(["synth", "--multi-label", "--count", "12", "--seed", "4", "--out", str(tmp_path / "a"),
                 "--format", "json"]) == 0
    record = json.loads(capsys.readouterr().out)[0]
    assert record["images"] == 12 and set(record["label_counts"]) == set(SHAPES)
    ds = read_data(tmp_path / "a" / "labels.csv", multi_label=True)
    assert ds.labels == list(SHAPES) and ds.targets.shape == (12, 5)
    assert ((ds.targets.sum(1) >= 1) & (ds.targets.sum(1) <= 3)).all()
    write_multilabel(tmp_path / "b", 12, seed=4)  # same seed, same bytes
    rel = [Path(p).relative_to(tmp_path / "a") for p in ds.paths]
    assert all((tmp_path / "a" / r).read_bytes() == (tmp_path / "b" / r).read_bytes() for r in rel)
    assert (tmp_path / "a" / "labels.csv").read_text() == (tmp_path / "b" / "labels.csv").read_text()
    scene = generate_scenes(1, seed=4)[0]
    assert scene.labels == [s for s in SHAPES if ds.targets[0][SHAPES.index(s)]]
    assert all(m.max() > 0.9 for m in scene.masks.values())  # every shape visible
