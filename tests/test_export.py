"""Export to ONNX and OpenVINO: float32 parity with the torch path (worst |diff| printed), dynamic batch, the
sidecar, serving through `siglite.load` and the CLI, and one-line errors for missing extras and bad sidecars."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

import siglite
from siglite.artifact import SIDECAR, read_sidecar
from siglite.cli.main import main
from siglite.errors import LoadError, SigliteError
from siglite.export import export

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
pytest.importorskip("onnxscript", reason="the onnx extra (onnxscript, for export) is not installed")

ATOL = 1e-4  # float32 parity bar (issue 4)
TEXTS = ["a photo of a cat", "two dogs", "x"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def onnx_dir(tiny_spiece, tmp_path_factory):
    """Exported through the CLI, as a user would."""
    out = tmp_path_factory.mktemp("export") / "onnx"
    assert main(["export", "--model", str(tiny_spiece), "--format", "onnx", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def openvino_dir(tiny_spiece, onnx_dir, tmp_path_factory):
    """`export(..., "openvino")`, reusing the ONNX graphs of `onnx_dir` for its torch -> ONNX step (tested there) so
    that the module exports once."""
    import shutil

    import siglite.export as ex

    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    out = tmp_path_factory.mktemp("export") / "openvino"
    real = ex.export_onnx_graphs

    def reuse(model, folder, **kw):
        for name in read_sidecar(onnx_dir).files.values():
            shutil.copy2(onnx_dir / name, folder / name)
        return {k: getattr(read_sidecar(onnx_dir), k) for k in ("files", "inputs", "outputs")}

    ex.export_onnx_graphs = reuse
    try:
        export(tiny_spiece, out, "openvino")
    finally:
        ex.export_onnx_graphs = real
    return out


@pytest.fixture(scope="module")
def served(request):
    """Loaded exports, one per (folder fixture, engine), shared by the tests of this module."""
    cache = {}

    def get(which: str, engine: str):
        if (which, engine) not in cache:
            cache[which, engine] = siglite.load(request.getfixturevalue(f"{which}_dir"), engine=engine)
        return cache[which, engine]

    return get


@pytest.fixture(scope="module")
def reference(tiny_spiece):
    return siglite.load(tiny_spiece, device="cpu")


def _pixels(n: int, size: int = 34, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def _worst(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


@pytest.mark.parametrize("which,engine", [("onnx", "onnxruntime"), ("openvino", "openvino"), ("onnx", "openvino")])
def test_float32_parity(which, engine, served, reference):
    model = served(which, engine)
    px = _pixels(3)
    pooled, hidden = model.engine.encode_image(px, tokens=True)
    ref_pooled, ref_hidden = reference.engine.encode_image(px, tokens=True)
    text, ref_text = model.text_features(TEXTS), reference.text_features(TEXTS)
    worst = {"pooler_output": _worst(pooled, ref_pooled), "last_hidden_state": _worst(hidden, ref_hidden),
             "text pooler_output": _worst(text, ref_text)}
    print(f"\n{which} via {engine}: worst |diff| vs torch " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
    assert hidden.shape == ref_hidden.shape and pooled.shape == ref_pooled.shape
    assert max(worst.values()) <= ATOL, worst


@pytest.mark.parametrize("which,engine", [("onnx", "onnxruntime"), ("openvino", "openvino")])
def test_dynamic_batch(which, engine, served, reference):
    model = served(which, engine)
    for n in (1, 3):
        px = _pixels(n, seed=n)
        pooled, hidden = model.engine.encode_image(px, tokens=True)
        assert pooled.shape[0] == hidden.shape[0] == n
        assert _worst(pooled, reference.engine.encode_image(px)[0]) <= ATOL
        ids, mask = reference.tokenize(TEXTS[:n])
        assert _worst(model.engine.encode_text(ids, mask), reference.engine.encode_text(ids, mask)) <= ATOL


def test_text_mask_is_honoured(served, reference):
    """The text graph always takes a mask: a padding mask changes the result exactly as in the torch path."""
    model = served("onnx", "onnxruntime")
    ids, _ = reference.tokenize(TEXTS)
    mask = np.ones_like(ids)
    mask[:, -5:] = 0
    assert _worst(model.engine.encode_text(ids, mask), reference.engine.encode_text(ids, mask)) <= ATOL
    assert _worst(model.engine.encode_text(ids, None), reference.engine.encode_text(ids, None)) <= ATOL


def test_sidecar_carries_what_serving_needs(onnx_dir, tiny_spiece, reference):
    sc = read_sidecar(onnx_dir)
    assert sc.format == "onnx" and sc.engine == "onnxruntime" and sc.precision == "float32"
    assert sc.image == reference.image_config.to_dict()
    assert sc.tokenizer == reference.tokenizer.settings()
    assert sc.text_length == 16
    assert sc.logit_scale == pytest.approx(reference.engine.logit_scale)
    assert sc.logit_bias == pytest.approx(reference.engine.logit_bias)
    assert sc.dims["vision_hidden"] == 32 and sc.dims["vision_tokens"] == 16
    assert sc.outputs["vision"] == ["last_hidden_state", "pooler_output"]
    for name in ("config.json", "spiece.model"):
        assert (onnx_dir / name).is_file()
    # the image processor in whichever file the source had it (transformers 5.x: processor_config.json)
    assert {p.name for p in tiny_spiece.iterdir()} >= {"processor_config.json"}
    assert (onnx_dir / "processor_config.json").is_file()


def test_load_and_classify_through_the_same_api(served, reference, sample_images):
    model = served("onnx", "onnxruntime")
    assert model.engine.name == "onnxruntime" and model.describe()["precision"] == "float32"
    labels = ["cat", "dog", "car"]
    got, want = model.classify(sample_images, labels), reference.classify(sample_images, labels)
    assert got.shape == (len(sample_images), 3)
    assert _worst(got, want) <= ATOL


def test_cli_classify_on_export(onnx_dir, tiny_spiece, sample_images, capsys):
    args = ["classify", str(sample_images[0]), "--labels", "cat", "dog", "--format", "json"]
    assert main(args + ["--model", str(onnx_dir), "--engine", "onnxruntime"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert main(args + ["--model", str(tiny_spiece)]) == 0
    want = json.loads(capsys.readouterr().out)
    got, want = got[0]["labels"], want[0]["labels"]  # one record per image: labels best first
    assert [r["label"] for r in got] == [r["label"] for r in want]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(got, want)) <= ATOL


def test_precision_is_fixed_at_export(onnx_dir):
    with pytest.raises(SigliteError, match="float32"):
        siglite.load(onnx_dir, engine="onnxruntime", dtype="bfloat16")


def test_bad_sidecar_names_the_field(onnx_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(onnx_dir, broken)
    data = json.loads((broken / SIDECAR).read_text())
    del data["logit_bias"]
    (broken / SIDECAR).write_text(json.dumps(data))
    with pytest.raises(LoadError, match="logit_bias"):
        read_sidecar(broken)
    (broken / SIDECAR).write_text("{not json")
    with pytest.raises(LoadError, match=SIDECAR):
        read_sidecar(broken)


def test_plain_checkpoint_serves_its_cached_export(tiny_spiece, onnx_dir, reference, tmp_path, monkeypatch):
    """engine="onnxruntime" on a plain checkpoint serves its export from the cache (made on first use; pre-filled
    here with the module's export so that no second export runs)."""
    import shutil

    from siglite.artifact import cache_path

    monkeypatch.setenv("SIGLITE_CACHE", str(tmp_path))
    shutil.copytree(onnx_dir, cache_path(tiny_spiece, "onnx"))
    model = siglite.load(tiny_spiece, engine="onnxruntime")
    assert model.engine.folder == cache_path(tiny_spiece, "onnx")
    px = _pixels(2)
    assert _worst(model.engine.encode_image(px)[0], reference.engine.encode_image(px)[0]) <= ATOL
    with pytest.raises(LoadError, match="siglite export"):
        read_sidecar(tmp_path)  # neither an export nor a checkpoint


def test_engine_never_exports(tiny_spiece, tmp_path, monkeypatch):
    """Only `siglite.load` (asked for a graph engine on a plain checkpoint) runs an export; an engine given a plain
    checkpoint says to export it and writes nothing."""
    from siglite.engines.onnxruntime import OnnxRuntimeEngine

    monkeypatch.setenv("SIGLITE_CACHE", str(tmp_path))
    with pytest.raises(LoadError, match="siglite export"):
        OnnxRuntimeEngine(tiny_spiece)
    assert list(tmp_path.iterdir()) == []


def _block_import(monkeypatch, name: str):
    """Make `import name` fail as if the package were not installed (a None entry in sys.modules does that)."""
    monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize("engine,module,extra", [("onnxruntime", "onnxruntime", "onnx"),
                                                 ("openvino", "openvino", "openvino")])
def test_missing_extra_is_a_clear_error(engine, module, extra, monkeypatch, onnx_dir):
    _block_import(monkeypatch, module)
    monkeypatch.delitem(sys.modules, f"siglite.engines.{engine}", raising=False)
    with pytest.raises(SigliteError, match=rf"pip install 'siglite\[{extra}\]'"):
        siglite.load(onnx_dir, engine=engine)


def test_missing_exporter_is_a_clear_error(monkeypatch, tiny_spiece, tmp_path, capsys):
    _block_import(monkeypatch, "onnxscript")
    assert main(["export", "--model", str(tiny_spiece), "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "siglite[onnx]" in err and len(err.strip().splitlines()) == 1
