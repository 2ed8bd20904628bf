"""siglite.tasks.bench: record fields, the statistics against hand-computed values, batch shrinking on OOM, the
transformers baseline ratio, JSON/CSV output and the CLI (on the tiny checkpoint, a few iterations)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from siglite.cli.main import main
from siglite.errors import SigliteError
from siglite.tasks import bench as B

FIELDS = {"model", "engine", "precision", "device", "mode", "batch_size", "requested_batch_size", "iters", "warmup",
          "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_mean", "throughput_img_s",
          "peak_memory_mb", "memory_mb", "image_size"}


def test_latency_fields_hand_values():
    f = B.latency_fields(np.array([0.1, 0.2, 0.3, 0.4]), batch_size=2)
    assert f["latency_ms_p50"] == pytest.approx(250.0)
    assert f["latency_ms_p90"] == pytest.approx(370.0)  # 300 + 0.7 * 100 (linear interpolation)
    assert f["latency_ms_mean"] == pytest.approx(250.0)
    assert f["throughput_img_s"] == pytest.approx(8.0)  # 2 images / 0.25 s


def test_add_ratios_hand_values():
    rows = [{"engine": e, "device": "cpu", "precision": "float32", "mode": "model", "batch_size": b,
             "latency_ms_p50": t} for e, b, t in [("torch", 1, 20.0), ("transformers", 1, 30.0), ("torch", 8, 100.0),
                                                  ("transformers", 8, 50.0), ("torch", 16, 5.0)]]
    B.add_ratios(rows)  # reference median / ours: 30 / 20, 50 / 100; no reference at batch 16
    assert [r.get("ratio_vs_transformers") for r in rows] == [1.5, None, 0.5, None, None]


def test_oom_shrinks_batch():
    seen = []

    def run(px):
        seen.append(len(px))
        if len(px) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    target = B.Target("fake", "float32", "cpu", run_pixels=run, run_images=run)
    rec = B.measure(target, "model", 8, pixels=np.zeros((3, 3, 4, 4), np.float32), images=[b""], iters=2, warmup=1)
    assert rec["batch_size"] == 2 and rec["requested_batch_size"] == 8 and seen[:2] == [8, 4]

    def broken(px):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):  # other errors are not retried
        B.measure(B.Target("fake", "float32", "cpu", broken, broken), "model", 4,
                  pixels=np.zeros((1, 3, 4, 4), np.float32), images=[b""], iters=1, warmup=0)


def test_timer_measures_a_known_sleep():
    """time_calls against time.sleep: every call at least the sleep, and the median below two sleeps (one timed call
    is one call; a loaded 2-core machine adds scheduling delay, so no tighter bound); warm-up calls are not timed."""
    import time

    calls = []
    seconds = B.time_calls(lambda: (calls.append(1), time.sleep(0.02)), iters=5, warmup=2)
    assert len(seconds) == 5 and len(calls) == 7
    assert np.all(seconds >= 0.02) and np.median(seconds) < 0.038, seconds


def test_peak_memory_sees_an_allocation():
    mem = B.PeakMemory("cpu")
    mem.start()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    delta, peak = mem.stop()
    del block
    assert delta >= 48 and peak >= delta


def test_bench_tiny_with_baseline(tiny_spiece, tmp_path):
    records = B.bench(tiny_spiece, batch_sizes=[1, 3], modes=["model", "e2e"], iters=2, warmup=1, device="cpu",
                      baseline="transformers", images=B.synthetic_images(2, size=(40, 50)))
    assert len(records) == 8  # (torch, transformers) x 2 modes x 2 batch sizes
    for r in records:
        assert FIELDS <= set(r) and r["device"] == "cpu" and r["image_size"] == "34x34"
        assert r["latency_ms_p50"] <= r["latency_ms_p90"] <= r["latency_ms_p99"]
        assert r["throughput_img_s"] == pytest.approx(r["batch_size"] * 1e3 / r["latency_ms_mean"])
        if r["engine"] == "torch":
            ref = next(b for b in records if b["engine"] == "transformers" and b["mode"] == r["mode"]
                       and b["batch_size"] == r["batch_size"])
            assert r["ratio_vs_transformers"] == pytest.approx(ref["latency_ms_p50"] / r["latency_ms_p50"])
    assert {r["engine"] for r in records} == {"torch", "transformers"}

    B.write_records(records, tmp_path / "r.json")
    B.write_records(records, tmp_path / "r.csv")
    assert json.loads((tmp_path / "r.json").read_text()) == records
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert len(rows) == 8 and "ratio_vs_transformers" in rows[0]
    assert float(rows[0]["latency_ms_p50"]) == pytest.approx(records[0]["latency_ms_p50"])
    with pytest.raises(SigliteError, match=r"\.json or \.csv"):
        B.write_records(records, tmp_path / "r.txt")

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(SigliteError, match="matplotlib"):  # optional dependency: a clear one-line error
            B.plot_records(records, tmp_path / "r.png")
    else:
        assert B.plot_records(records, tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_decode_gpu_is_passed_through(tiny_spiece):
    """bench --decode gpu times `preprocess.gpu.decode_batch_gpu` + the engine; without CUDA it falls back to the CPU
    decode, so its features equal the CPU path's here (the GPU differences are measured in test_cuda_engine.py)."""
    imgs = B.synthetic_images(2, size=(40, 50))
    cpu = B.siglite_target(tiny_spiece, device="cpu").run_images(imgs)
    gpu = B.siglite_target(tiny_spiece, device="cpu", decode="gpu").run_images(imgs)
    np.testing.assert_allclose(gpu, cpu, atol=1e-6, rtol=0)
    records = B.bench(tiny_spiece, batch_sizes=[2], modes=["e2e"], iters=1, warmup=0, device="cpu", images=imgs,
                      decode="gpu")
    assert [r["decode"] for r in records] == ["gpu"]
    with pytest.raises(SigliteError, match="unknown decode"):
        B.siglite_target(tiny_spiece, device="cpu", decode="nvjpeg")


def test_bench_errors(tiny_spiece):
    with pytest.raises(SigliteError, match="unknown bench mode"):
        B.bench(tiny_spiece, modes=["fast"])
    with pytest.raises(SigliteError, match="unknown baseline"):
        B.bench(tiny_spiece, baseline="onnx")
    with pytest.raises(SigliteError, match="unknown engine 'nope'"):
        B.bench(tiny_spiece, engines=["nope"], batch_sizes=[1], iters=1)
    assert B.bench(tiny_spiece, engines=["nope"], batch_sizes=[1], iters=1, skip_unavailable=True) == []


def test_cli_bench_spec_with_baseline(tmp_path, capsys):
    # the documented command, shrunk: real base-224 width and input, one layer, one batch of 1
    argv = ["bench", "--spec", "siglip-base-patch16-224", "--layers", "1", "--batch-sizes", "1", "--iters", "1",
            "--warmup", "0", "--device", "cpu", "--baseline", "transformers", "--format", "json",
            "--out", str(tmp_path / "b.json"), str(tmp_path / "b.csv")]
    assert main(argv) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["engine"] for r in records] == ["torch", "transformers"]
    assert records[0]["image_size"] == "224x224" and records[0]["ratio_vs_transformers"] > 0
    assert "siglip-base-patch16-224" in records[0]["model"]
    assert json.loads((tmp_path / "b.json").read_text()) == records and (tmp_path / "b.csv").is_file()


def test_cli_bench_model_table(tiny_spiece, capsys):
    assert main(["bench", "--model", str(tiny_spiece), "--batch-sizes", "2", "--iters", "2", "--warmup", "0",
                 "--device", "cpu", "--mode", "e2e"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:5] == ["engine", "precision", "device", "mode", "batch_size"]
    assert out[1].split()[:5] == ["torch", "float32", "cpu", "e2e", "2"]


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_bench_cuda_synchronised_with_memory(tiny_spiece):
    records = B.bench(tiny_spiece, batch_sizes=[4], iters=3, warmup=1, device="cuda", precisions=["bfloat16"],
                      baseline="transformers")
    assert [r["engine"] for r in records] == ["torch", "transformers"]
    for r in records:
        assert r["device"].startswith("cuda") and r["threads"] is None and r["memory_mb"] > 0
    ref, ours = records[1], records[0]  # the ratio is the reference's median latency over ours, as documented
    assert ours["ratio_vs_transformers"] == pytest.approx(ref["latency_ms_p50"] / ours["latency_ms_p50"])


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_timer_waits_for_the_kernel():
    """A GPU kernel that spins a known time returns at once to the host: only the synchronised timer sees it."""
    import torch

    torch.cuda.init()
    cycles = int(torch.cuda.get_device_properties(0).clock_rate * 1e3 * 0.05)  # clock_rate in kHz: ~50 ms of spin
    kernel = (lambda: torch.cuda._sleep(cycles))
    unsynced = B.time_calls(kernel, iters=3, warmup=1, cuda=False)
    torch.cuda.synchronize()
    synced = B.time_calls(kernel, iters=3, warmup=1, cuda=True)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    kernel()
    end.record()
    end.synchronize()
    gpu_s = start.elapsed_time(end) / 1e3  # the kernel's own duration, by CUDA events
    print(f"\nkernel {gpu_s * 1e3:.1f} ms (events); timed synchronised {np.median(synced) * 1e3:.1f} ms, "
          f"unsynchronised {np.median(unsynced) * 1e3:.3f} ms")
    assert np.all(synced >= 0.9 * gpu_s) and np.median(synced) <= gpu_s + 0.02
    assert np.median(unsynced) < 0.2 * gpu_s  # launches are asynchronous: without the sync the timer is wrong
