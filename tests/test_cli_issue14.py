"""Issue 14, item by item: the exact command, its exit code and one-line message, and that nothing was overwritten.

Commands run in-process (`siglite.cli.main.main`) on the tiny random checkpoint and the trained fixture; only the
checks that need a real process (a closed pipe, what `--help` imports) start one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import siglite
from siglite.cli.main import main
from siglite.errors import SigliteError

TRAINED = Path(__file__).parent / "fixtures" / "trained-tiny"
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}


def cli(argv: list) -> int:
    return main([str(a) for a in argv])


def run(capsys, argv: list) -> tuple[int, str, str]:
    code = cli(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {err!r}"
    assert "Traceback" not in err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def img(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "red.png"
    Image.new("RGB", (40, 30), (220, 30, 30)).save(path)
    return path


@pytest.fixture(scope="module")
def empty_jpg(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bad") / "zero.jpg"
    path.write_bytes(b"")
    return path


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """A small synth dataset (2 images per class) with classnames.txt and captions.jsonl."""
    out = tmp_path_factory.mktemp("shapes") / "ds"
    assert cli(["synth", "--out", str(out), "--per-class", "2", "--seed", "1", "--jsonl", "--quiet"]) == 0
    return out


# -- 1. silent wrong results -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["-1", "0", "x"])
def test_1_encode_batch_size_must_be_positive(capsys, tiny_spiece, img, tmp_path, value):
    code, _, err = run(capsys, ["encode", img, "--model", tiny_spiece, "--out", tmp_path / "e.npy",
                                "--batch-size", value])
    line = one_line(err)
    assert code == 2 and line.startswith("siglite encode: error: argument --batch-size:") and "positive" in line
    assert not list(tmp_path.iterdir())


def test_1_api_batch_size_and_str_label_and_template(tiny_spiece, img):
    model = siglite.load(tiny_spiece, device="cpu")
    for bad in (-1, 0, 1.5, True):
        with pytest.raises(SigliteError, match="batch_size must be a positive integer"):
            model.image_features([img], batch_size=bad)
        with pytest.raises(SigliteError, match="batch_size must be a positive integer"):
            model.text_features(["a"], batch_size=bad)
    one = model.classify(img, "red circle")  # a str is one label, not ten one-character labels
    assert one.shape == (1, 1)
    np.testing.assert_allclose(one, model.classify([img], ["red circle"]), atol=0)
    with pytest.raises(SigliteError, match=r"template 'photo of' has no \{\} placeholder"):
        model.classify(img, ["a", "b"], template="photo of")
    with pytest.raises(SigliteError, match=r"named field \{label\}"):
        model.classify(img, ["a", "b"], template="photo of {label}")
    with pytest.raises(SigliteError, match="top_k must be a positive integer"):
        model.classify(img, ["a"], top_k=0)


def test_1_classify_template_without_placeholder(capsys, tiny_spiece, img):
    code, out, err = run(capsys, ["classify", img, "--model", tiny_spiece, "--labels", "a", "b",
                                  "--template", "photo of"])
    assert code == 2 and out == ""
    assert "argument --template: template 'photo of' has no {} placeholder" in one_line(err)


def test_1_bench_layers_zero(capsys):
    code, _, err = run(capsys, ["bench", "--spec", "siglip-base-patch16-224", "--layers", "0"])
    assert code == 2 and "argument --layers: must be a positive integer, got 0" in one_line(err)


def test_1_embed_text_file_without_text(capsys, tiny_spiece, tmp_path):
    caps = tmp_path / "caps.txt"
    caps.write_text("a red car\na cat\na dog\na blue square\n")
    code, _, err = run(capsys, ["embed", caps, "--model", tiny_spiece, "--out", tmp_path / "emb"])
    assert code == 1 and "for a file of texts add --text" in one_line(err)
    assert not (tmp_path / "emb").exists()


# -- 2. finished work overwritten or lost ----------------------------------------------------------------------------


def _train_args(data, out, *extra):
    return ["train", "--data", data, "--out", out, "--steps", "4", "--batch-size", "8", "--width", "16", "--depth",
            "1", "--heads", "2", "--image-size", "16", "--patch-size", "8", "--log-every", "1", "--quiet",
            "--format", "json", *extra]


def test_2_train_refuses_to_overwrite_a_model(capsys, shapes, tmp_path):
    out = tmp_path / "my-siglip"
    assert cli(_train_args(shapes / "captions.jsonl", out)) == 0
    capsys.readouterr()
    before = snapshot(out)
    code, _, err = run(capsys, _train_args(shapes / "captions.jsonl", out, "--steps", "2"))
    assert code == 1
    assert one_line(err) == f"siglite train: error: --out {out}: exists and is not empty; pass --overwrite to " \
                            f"replace the model"
    assert snapshot(out) == before
    code, out_text, _ = run(capsys, _train_args(shapes / "captions.jsonl", out, "--steps", "2", "--overwrite"))
    assert code == 0 and json.loads((out / "training.json").read_text())["step"] == 2
    # --overwrite replaces only a model folder
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep")
    code, _, err = run(capsys, _train_args(shapes / "captions.jsonl", tmp_path / "notes", "--overwrite"))
    assert code == 1 and "is not a model folder" in one_line(err)
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep"


def test_2_train_ctrl_c_saves_a_loadable_model(capsys, shapes, tmp_path, monkeypatch):
    import siglite.tasks.train as train_mod

    calls = {"n": 0}
    loss = train_mod.sigmoid_loss

    def interrupt_at_step_3(*a, **k):  # an exception inside step 3: the weights are kept, not resumable
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return loss(*a, **k)

    monkeypatch.setattr(train_mod, "sigmoid_loss", interrupt_at_step_3)
    out = tmp_path / "run"
    code, _, err = run(capsys, _train_args(shapes / "captions.jsonl", out, "--steps", "10", "--save-every", "100"))
    assert code == 130
    line = one_line(err)
    assert "siglite train: interrupted; saved the model as of step 2/10" in line and "--init" in line
    state = json.loads((out / "training.json").read_text())
    assert (state["step"], state["complete"], state["resumable"]) == (2, False, False)
    model = siglite.load(out, device="cpu")  # a valid checkpoint, not only tokenizer files
    assert model.image_features(np.zeros((16, 16, 3), np.uint8)).shape == (1, 16)


def test_2_train_sigint_then_resume_is_bit_identical(capsys, shapes, tmp_path, monkeypatch):
    import signal

    import siglite.tasks.train as train_mod

    data = shapes / "captions.jsonl"
    assert cli(_train_args(data, tmp_path / "ref", "--steps", "6", "--save-every", "100")) == 0
    calls = {"n": 0}
    loss = train_mod.sigmoid_loss

    def ctrl_c_during_step_3(*a, **k):  # a real SIGINT: the handler lets step 3 finish, then saves
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return loss(*a, **k)

    monkeypatch.setattr(train_mod, "sigmoid_loss", ctrl_c_during_step_3)
    out = tmp_path / "run"
    capsys.readouterr()
    code, _, err = run(capsys, _train_args(data, out, "--steps", "6", "--save-every", "100"))
    assert code == 130  # stderr: the handler's "finishing this step" line, then the interrupt line
    assert err.strip().splitlines()[-1] == f"siglite train: interrupted; saved the model and training state as of " \
                                           f"step 3/6 to {out}; to continue, run the same command with --resume"
    assert json.loads((out / "training.json").read_text())["step"] == 3 and (out / train_mod.TRAIN_STATE).is_file()
    monkeypatch.undo()
    code, _, err = run(capsys, _train_args(data, out, "--steps", "7", "--save-every", "100", "--resume"))
    assert code == 1 and "other arguments (steps: 6 there, 7 now)" in one_line(err)
    assert cli(_train_args(data, out, "--steps", "6", "--save-every", "100", "--resume")) == 0
    # the resumed run equals the uninterrupted one bit for bit (weights, and the loss of every step)
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "ref" / "model.safetensors").read_bytes()
    done, ref = (json.loads((d / "training.json").read_text()) for d in (out, tmp_path / "ref"))
    assert done["complete"] and [h["loss"] for h in done["history"]] == [h["loss"] for h in ref["history"]]
    assert not (out / train_mod.TRAIN_STATE).exists()


def test_2_train_saves_periodically(shapes, tmp_path, monkeypatch):
    import siglite.tasks.train as train_mod

    saved_at = []
    save = train_mod._save_atomic
    monkeypatch.setattr(train_mod, "_save_atomic", lambda m, out, p: (saved_at.append(len(saved_at)), save(m, out, p)))
    steps = []
    train_mod.train(shapes / "captions.jsonl", tmp_path / "m", steps=6, batch_size=8, save_every=2, log_every=100,
                    arch=train_mod.Arch(image_size=16, patch_size=8, width=16, depth=1, heads=2),
                    progress=lambda n: steps.append(n))
    assert len(saved_at) == 3 and len(steps) == 6  # after steps 2 and 4, and the final save


def test_2_synth_refuses_existing_dataset_and_replaces_cleanly(capsys, tmp_path):
    out = tmp_path / "ds"
    assert cli(["synth", "--out", out, "--per-class", "2", "--jsonl", "--quiet"]) == 0
    capsys.readouterr()
    before = snapshot(out)
    code, _, err = run(capsys, ["synth", "--out", out, "--per-class", "1", "--quiet"])
    assert code == 1 and "exists and is not empty; pass --overwrite to replace the dataset" in one_line(err)
    assert snapshot(out) == before
    code, text, _ = run(capsys, ["synth", "--out", out, "--per-class", "1", "--overwrite", "--quiet",
                                 "--format", "json"])
    assert code == 0 and json.loads(text)[0]["images"] == 25
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) == 26 and not (out / "captions.jsonl").exists()  # no stale images or captions
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_2_encode_refuses_to_overwrite(capsys, tiny_spiece, img, tmp_path):
    out = tmp_path / "e.npy"
    assert cli(["encode", str(img), "--model", str(tiny_spiece), "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    before = out.read_bytes()
    code, _, err = run(capsys, ["encode", img, img, "--model", tiny_spiece, "--out", out])
    assert code == 1 and one_line(err) == f"siglite encode: error: --out {out}: exists; pass --overwrite to replace it"
    assert out.read_bytes() == before
    assert cli(["encode", str(img), str(img), "--model", str(tiny_spiece), "--out", str(out), "--overwrite"]) == 0
    assert np.load(out).shape == (2, 32)


# -- 3. bad output paths found before the work -----------------------------------------------------------------------


def _no_work(monkeypatch, module, name):
    def fail(*a, **k):
        raise AssertionError("the work ran before the output path was checked")

    monkeypatch.setattr(module, name, fail)


def test_3_eval_out_checked_first(capsys, shapes, tmp_path, monkeypatch):
    import siglite.tasks.evaluate as evaluate

    _no_work(monkeypatch, evaluate, "zero_shot")
    base = ["eval", "zeroshot", "--model", TRAINED, "--data", shapes]
    code, _, err = run(capsys, [*base, "--out", "/nonexistent/r.json"])
    assert code == 1 and one_line(err) == "siglite eval: error: --out /nonexistent/r.json: folder /nonexistent " \
                                          "does not exist"
    code, _, err = run(capsys, [*base, "--out", tmp_path])
    assert code == 1 and one_line(err) == f"siglite eval: error: --out {tmp_path}: is a folder; give a file name"


def test_3_bench_out_and_plot_checked_first(capsys, monkeypatch, tmp_path):
    import siglite.tasks.bench as bench

    _no_work(monkeypatch, bench, "bench_spec")
    base = ["bench", "--spec", "siglip-base-patch16-224", "--layers", "1", "--batch-sizes", "1"]
    code, _, err = run(capsys, [*base, "--out", tmp_path / "missing" / "b.json"])
    assert code == 1 and "folder" in one_line(err) and "does not exist" in err
    code, _, err = run(capsys, [*base, "--plot", tmp_path / "missing" / "b.png"])
    assert code == 1 and one_line(err).startswith("siglite bench: error: --plot ")
    code, _, err = run(capsys, [*base, "--out", tmp_path / "b.txt"])
    assert code == 1 and "records are written as .json or .csv" in one_line(err)


# -- 4. bench reads the sidecar --------------------------------------------------------------------------------------


def test_4_bench_exported_folder(capsys, tiny_spiece, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'siglite[onnx]')")
    out = tmp_path / "tiny-onnx"
    assert cli(["export", "--model", str(tiny_spiece), "--graph-format", "onnx", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    code, text, err = run(capsys, ["bench", "--model", out, "--batch-sizes", "1", "--iters", "1", "--warmup", "0",
                                   "--format", "json"])
    assert code == 0, err
    (record,) = json.loads(text)
    assert (record["engine"], record["precision"]) == ("onnxruntime", "float32")
    # export itself: refuses to overwrite, takes --format like every command
    code, _, err = run(capsys, ["export", "--model", tiny_spiece, "--out", out, "--format", "json"])
    assert code == 1 and "pass --overwrite to replace the export" in one_line(err)


# -- 5. one-line errors instead of tracebacks ------------------------------------------------------------------------


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the CPU-only message")
def test_5_device_cuda_without_cuda(capsys, tiny_spiece, img):
    code, _, err = run(capsys, ["classify", img, "--model", tiny_spiece, "--labels", "a", "--device", "cuda"])
    assert code == 1 and "device 'cuda': torch sees no CUDA GPU" in one_line(err)
    with pytest.raises(SigliteError, match="no CUDA GPU"):
        siglite.load(tiny_spiece, device="cuda")
    with pytest.raises(SigliteError, match="unknown device 'gpu'"):
        siglite.load(tiny_spiece, device="gpu")


def test_5_device_gpu_and_named_template(capsys, tiny_spiece, img):
    code, _, err = run(capsys, ["classify", img, "--model", tiny_spiece, "--labels", "a", "--device", "gpu"])
    assert code == 2 and "argument --device: unknown device 'gpu'" in one_line(err)
    code, _, err = run(capsys, ["classify", img, "--model", tiny_spiece, "--labels", "a",
                                "--template", "photo of {label}"])
    assert code == 2 and "named field {label}; use {} where the label goes" in one_line(err)


def test_5_out_is_a_file_or_a_folder(capsys, tiny_spiece, tmp_path, shapes):
    afile = tmp_path / "file"
    afile.write_text("mine")
    code, _, err = run(capsys, ["embed", shapes, "--model", tiny_spiece, "--out", afile])
    assert code == 1 and one_line(err) == f"siglite embed: error: --out {afile}: is a file; give a folder"
    code, _, err = run(capsys, ["synth", "--out", afile])
    assert code == 1 and one_line(err) == f"siglite synth: error: --out {afile}: is a file; give a folder"
    assert afile.read_text() == "mine"
    for flag in ("--classnames", "--templates"):
        code, _, err = run(capsys, ["eval", "zeroshot", "--model", TRAINED, "--data", shapes, flag, tmp_path])
        assert code == 2 and f"argument {flag}: {tmp_path}: is a folder; give a file" in one_line(err)


def test_5_broken_pipe_in_process(capsys, tiny_spiece, img, monkeypatch):
    class Closed:
        def write(self, s):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self):
            return os.open(os.devnull, os.O_WRONLY)

    monkeypatch.setattr(sys, "stdout", Closed())
    code = main(["classify", str(img), "--model", str(tiny_spiece), "--labels", "a", "b", "--format", "json"])
    monkeypatch.undo()
    assert code == 141 and capsys.readouterr().err == ""


def test_5_broken_pipe_into_head():
    # `head -n 0` closes the pipe before siglite writes (it exits at once, while siglite is still importing), so the
    # write always meets a closed pipe; `head -n 1` would race a single small write against head's exit.
    cmd = f"{sys.executable} -m siglite.cli.main list --format json | head -n 0"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.stdout == "" and proc.stderr == "" and proc.returncode == 141


# -- 6. eval reads classnames.txt ------------------------------------------------------------------------------------


def test_6_eval_reads_classnames_txt(capsys, shapes):
    from siglite.data.datasets import read_classification
    from siglite.data.synthetic import CLASSNAMES

    assert read_classification(shapes).classnames == CLASSNAMES  # "red circle", not the folder name "red_circle"
    auto = json.loads(run(capsys, ["eval", "zeroshot", "--model", TRAINED, "--data", shapes, "--format", "json"])[1])
    given = json.loads(run(capsys, ["eval", "zeroshot", "--model", TRAINED, "--data", shapes, "--classnames",
                                    shapes / "classnames.txt", "--format", "json"])[1])
    assert auto["acc1"] == given["acc1"] and auto["acc1"] >= 0.7, auto
    fid = json.loads(run(capsys, ["eval", "fidelity", "--model", TRAINED, "--data", shapes, "--candidate-precision",
                                  "bfloat16", "--format", "json"])[1])
    assert fid["reference_acc1"] == auto["acc1"]


# -- 7. progress and --labels-file -----------------------------------------------------------------------------------


class FakeTTY:
    def __init__(self):
        self.text = ""

    def write(self, s):
        self.text += s

    def flush(self):
        pass

    def isatty(self):
        return True


def test_7_progress_bar_on_a_terminal_only(tiny_spiece, img, tmp_path, monkeypatch, capsys):
    from siglite import progress

    monkeypatch.setattr(sys, "stderr", FakeTTY())
    assert progress.enabled() and not progress.enabled(quiet=True)
    assert cli(["encode", str(img), str(img), "--model", str(tiny_spiece), "--out", str(tmp_path / "a.npy")]) == 0
    text = sys.stderr.text  # tqdm draws at most every 0.1 s, so a fast run may show only its first frame
    assert "encode:" in text and "/2 [" in text and "img/s" in text
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    assert cli(["encode", str(img), "--model", str(tiny_spiece), "--out", str(tmp_path / "b.npy"), "--quiet"]) == 0
    assert tty.text == ""
    monkeypatch.undo()
    assert not progress.enabled()  # pytest's captured stderr is not a terminal


def test_7_labels_file_with_bom(capsys, tiny_spiece, img, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_bytes("\ufeffred circle\n\nblue square\n".encode())
    code, text, _ = run(capsys, ["classify", img, "--model", tiny_spiece, "--labels", "cat", "--labels-file", labels,
                                 "--format", "json"])
    assert code == 0
    assert sorted(x["label"] for x in json.loads(text)[0]["labels"]) == ["blue square", "cat", "red circle"]
    code, _, err = run(capsys, ["classify", img, "--model", tiny_spiece])
    assert code == 1 and "give --labels or --labels-file" in one_line(err)


# -- 8. one bad image ------------------------------------------------------------------------------------------------


def test_8_skip_bad(capsys, tiny_spiece, img, empty_jpg, tmp_path):
    code, _, err = run(capsys, ["classify", img, empty_jpg, "--model", tiny_spiece, "--labels", "a"])
    assert code == 1 and "zero.jpg" in one_line(err)
    code, text, err = run(capsys, ["classify", img, empty_jpg, "--model", tiny_spiece, "--labels", "a",
                                   "--skip-bad", "--format", "json"])
    assert code == 0 and [r["image"] for r in json.loads(text)] == [str(img)]
    assert "zero.jpg" in one_line(err) and "skipped" in err

    out = tmp_path / "e.npy"
    code, _, err = run(capsys, ["encode", empty_jpg, img, "--model", tiny_spiece, "--out", out])
    assert code == 1 and "zero.jpg" in one_line(err) and not out.exists()
    code, text, err = run(capsys, ["encode", empty_jpg, img, empty_jpg, "--model", tiny_spiece, "--out", out,
                                   "--skip-bad", "--format", "json"])
    assert code == 0 and len(err.strip().splitlines()) == 2
    record = json.loads(text)[0]
    assert record["skipped"] == 2 and record["shape"] == [1, 32]
    assert (tmp_path / "e.sources.txt").read_text().splitlines() == [str(img)]


# -- 9. interrupted and incremental embeds ---------------------------------------------------------------------------


def _pictures(folder: Path, n: int, start: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        Image.new("RGB", (20 + i, 24), (10 * i % 255, 90, 200)).save(folder / f"p{i:02d}.png")


def test_9_interrupted_embed_says_how_to_resume_and_search_refuses(capsys, tiny_spiece, tmp_path, monkeypatch):
    import siglite.tasks.embed.store as store

    src, out = tmp_path / "in", tmp_path / "emb"
    _pictures(src, 6)
    write = store.OutputDir.write_shard
    calls = {"n": 0}

    def ctrl_c_after_one(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return write(self, *a, **k)

    monkeypatch.setattr(store.OutputDir, "write_shard", ctrl_c_after_one)
    code, _, err = run(capsys, ["embed", src, "--model", tiny_spiece, "--out", out, "--shard-size", "2"])
    assert code == 130
    assert one_line(err) == f"siglite embed: interrupted; 1/3 shards are on disk in {out}; run the same command " \
                            f"again to finish (only the missing shards are computed)"
    monkeypatch.undo()

    code, _, err = run(capsys, ["search", out, "a red car"])
    assert code == 1 and "unfinished embed (1/3 shards done)" in one_line(err) and "--partial" in err
    code, text, err = run(capsys, ["search", out, "a red car", "--partial", "--format", "json"])
    assert code == 0 and len(json.loads(text)) == 2 and "searching 1 of 3 shards" in one_line(err)

    code, text, _ = run(capsys, ["embed", src, "--model", tiny_spiece, "--out", out, "--shard-size", "2",
                                 "--format", "json"])
    assert code == 0 and json.loads(text)[0]["shards_run"] == 2
    code, text, _ = run(capsys, ["search", out, "a red car", "--top", "3", "--format", "json"])  # model from manifest
    assert code == 0 and [r["rank"] for r in json.loads(text)] == [1, 2, 3]


def test_9_incremental_embed(capsys, tiny_spiece, tmp_path):
    from siglite.tasks.embed.store import open_store

    src, out = tmp_path / "in", tmp_path / "emb"
    _pictures(src, 5)
    args = ["embed", src, "--model", tiny_spiece, "--out", out, "--shard-size", "2", "--format", "json"]
    assert run(capsys, args)[0] == 0
    first = {p.name: p.read_bytes() for p in (out / "img_emb").iterdir()}
    _pictures(src, 1, start=5)  # one new image
    code, text, _ = run(capsys, args)
    record = json.loads(text)[0]
    assert code == 0 and (record["new"], record["items_run"], record["shards_run"], record["shards"]) == (1, 1, 1, 4)
    assert all((out / "img_emb" / name).read_bytes() == data for name, data in first.items())  # old shards untouched
    store = open_store(out)
    assert store.rows == 6 and store.complete
    (src / "p00.png").unlink()
    code, text, err = run(capsys, args)
    assert code == 0 and json.loads(text)[0]["removed"] == 1 and json.loads(text)[0]["items_run"] == 0
    assert "1 input(s) embedded earlier are no longer in" in one_line(err) and "p00.png" in err
    code, _, err = run(capsys, [*args, "--dtype", "float16"])
    assert code == 1 and "(dtype: 'float32' there, 'float16' now)" in one_line(err)


# -- 10. inconsistencies ---------------------------------------------------------------------------------------------


def test_10_embed_normalize_and_metadata_columns(capsys, tiny_spiece, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed")
    src = tmp_path / "in"
    _pictures(src, 3)
    assert run(capsys, ["embed", src, "--model", tiny_spiece, "--out", tmp_path / "n", "--normalize"])[0] == 0
    emb = np.load(tmp_path / "n" / "img_emb" / "part-00000.npy")
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    assert json.loads((tmp_path / "n" / "manifest.json").read_text())["normalized"] is True
    assert pq.read_table(tmp_path / "n" / "metadata" / "part-00000.parquet").column_names == \
        ["id", "key", "source", "width", "height"]


def test_10_encode_reports_the_path_it_wrote(capsys, tiny_spiece, img, tmp_path):
    code, text, _ = run(capsys, ["encode", img, "--model", tiny_spiece, "--out", tmp_path / "x.txt",
                                 "--format", "json"])
    assert code == 0 and json.loads(text)[0]["out"] == str(tmp_path / "x.txt.npy")
    assert (tmp_path / "x.txt.npy").is_file() and not (tmp_path / "x.txt").exists()


def test_10_export_format_flags(capsys):
    from siglite.cli.main import build_parser

    args = build_parser().parse_args(["export", "--model", "m", "--out", "o", "--format", "json"])
    assert (args.format, args.graph_format) == ("json", None)
    args = build_parser().parse_args(["export", "--model", "m", "--out", "o", "--output-format", "json", "--to",
                                      "openvino"])
    assert (args.format, args.graph_format) == ("json", "openvino")


def test_10_bom_in_first_caption(tmp_path):
    from siglite.data.datasets import read_captions_jsonl
    from siglite.data.sources import open_source

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "c.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps({"image": "a.png", "captions": ["a"]}).encode())
    assert read_captions_jsonl(tmp_path / "c.jsonl")[0]["captions"] == ["a"]
    (tmp_path / "t.txt").write_bytes("\ufefffirst caption\nsecond\n".encode())
    source = open_source(tmp_path / "t.txt", text=True)
    assert [source.load(it) for it in source.items()][0] == "first caption"


def test_10_float_tiff_in_0_1(tmp_path):
    from siglite.preprocess.image import decode

    ramp = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(ramp, mode="F").save(tmp_path / "f.tif")
    rgb = decode(tmp_path / "f.tif")
    np.testing.assert_array_equal(rgb[..., 0], np.rint(ramp * 255).astype(np.uint8))
    Image.fromarray(ramp * 200, mode="F").save(tmp_path / "g.tif")  # 0..255 scale: as PIL converts it
    np.testing.assert_array_equal(decode(tmp_path / "g.tif")[..., 0], (ramp * 200).astype(np.uint8))


def test_10_info_shows_only_tower_fields(capsys):
    info = json.loads(run(capsys, ["info", "--model", TRAINED, "--format", "json"])[1])
    assert "vocab_size" not in info["vision_config"] and "image_size" not in info["text_config"]
    assert info["vision_config"]["patch_size"] == 8 and info["text_config"]["vocab_size"] == 256


def test_10_help_is_fast_and_imports_no_torch():
    code = ("import sys, time; t = time.perf_counter(); from siglite.cli.main import build_parser; p = build_parser(); "
            "h = p.format_help(); print(round(time.perf_counter() - t, 3), "
            "sorted(m for m in ('torch', 'cv2', 'numpy', 'siglite.pipeline') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    seconds, heavy = out.stdout.split(" ", 1)
    print(f"siglite --help parser: {seconds} s")
    assert heavy.strip() == "[]", heavy
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "siglite.cli.main", "classify", "--help"], capture_output=True,
                          text=True, env=ENV, timeout=60)
    print(f"siglite classify --help: {time.perf_counter() - t:.2f} s wall")
    assert proc.returncode == 0


def test_10_help_examples_keep_their_lines():
    from siglite.cli.main import COMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in COMMANDS:
        text = sub.choices[name].format_help()
        examples = [line for line in text.splitlines() if line.strip().startswith("siglite ")]
        assert examples, f"{name}: no example lines in --help"
        assert all(line.strip().count("siglite ") == 1 for line in examples), f"{name}: examples run together"


def test_cli_constants_match_the_library():
    from siglite.cli import embed_cmd, quantize_cmd, synth_cmd, train_cmd
    from siglite.quant.int8 import RECIPES, FidelityTarget as Target
    from siglite.tasks.quantize import ENGINES
    from siglite.data import synthetic
    from siglite.tasks import embed, train

    assert quantize_cmd.RECIPES == tuple(RECIPES) and quantize_cmd.ENGINES == tuple(ENGINES)
    from siglite.cli import heatmap_cmd
    from siglite.tasks import heatmap

    assert heatmap_cmd.MODES == heatmap.MODES
    assert (quantize_cmd.TARGET_MEAN, quantize_cmd.TARGET_LOW) == (Target.mean, Target.low)
    assert train_cmd.POSITIVES == train.POSITIVES
    assert train_cmd.ARCH_DEFAULTS == {f: getattr(train.Arch(), f) for f in train_cmd.ARCH_ARGS}
    assert (synth_cmd.N_CLASSES, synth_cmd.DEFAULT_IMAGE_SIZE) == (len(synthetic.CLASSNAMES),
                                                                    synthetic.DEFAULT_IMAGE_SIZE)
    assert (embed_cmd.DTYPES, embed_cmd.DEFAULT_SHARD_SIZE) == (embed.DTYPES, embed.DEFAULT_SHARD_SIZE)
