"""Bounded load test of `siglite serve` on loopback: N concurrent single-image clients for a fixed time.

For each model it starts the real server (`siglite serve` in a subprocess on 127.0.0.1, an ephemeral port), runs the
clients for `--warmup` + `--duration` seconds, counts only the requests that complete inside the measured window, then
stops the server with SIGTERM (which must exit 0). Two server configurations per model in the same run: dynamic
batching (`--max-batch-size B`) and `--max-batch-size 1`, so the gain of batching across requests is measured on the
same machine minutes apart. For the base-224 shape the script also measures `siglite bench`'s model-only throughput
(`siglite.tasks.bench.bench`, preprocessed pixels, batch B) on the same checkpoint, which is the issue's target:
served images/s >= 90% of that with >= 8 concurrent single-image clients.

Models: "tiny" = the committed trained fixture (32 px; HTTP and batching overhead dominate), "base" =
siglip-base-patch16-224 shape with random weights (vision tower only; compute dominates).

Everything is bounded: every wait has a timeout, the clients stop after the window, the servers are stopped (and
killed if they do not exit). Usage::

    python benchmarks/serve_load.py                              # tiny + base, 8 clients, 25 s per configuration
    python benchmarks/serve_load.py --models tiny --duration 10 --json serve_load.json
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "trained-tiny"


def _random_checkpoint(spec_name: str, folder: Path) -> Path:
    """Random weights at a real shape, vision tower only."""
    from siglite.checkpoints import random_model, save_checkpoint
    from siglite.registry import get_spec

    spec = get_spec(spec_name)
    save_checkpoint(random_model(spec, seed=0, text=False), folder, spec)
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`siglite serve` in a subprocess on 127.0.0.1."""

    def __init__(self, folder: Path, max_batch_size: int, max_wait_ms: float, workers: int,
                 threads: int | None = None):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "siglite.cli.main", "serve", "--model", f"m={folder}", "--host", "127.0.0.1",
             "--port", str(self.port), "--max-batch-size", str(max_batch_size), "--max-wait-ms", str(max_wait_ms),
             "--workers", str(workers), "--max-queue", "4096", "--timeout", "120", "--log-level", "warning"]
            + (["--threads", str(threads)] if threads else []),
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 300) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read().decode(errors='replace')[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError("server not ready")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9


def run_clients(url: str, images: list[str], clients: int, warmup: float, duration: float) -> dict:
    """`clients` threads, each posting one image at a time; stats over requests completing in the window."""
    t_start = time.monotonic()
    t_measure, t_end = t_start + warmup, t_start + warmup + duration
    done: list[tuple[float, float, int]] = []  # (end time, latency, status)
    lock = threading.Lock()

    def client(k: int) -> None:
        with httpx.Client(timeout=180) as http:
            i = k
            while time.monotonic() < t_end:
                body = {"model": "m", "input": [images[i % len(images)]], "modality": "image"}
                t0 = time.monotonic()
                try:
                    status = http.post(f"{url}/v1/embeddings", json=body).status_code
                except httpx.HTTPError:
                    status = 599
                t1 = time.monotonic()
                with lock:
                    done.append((t1, t1 - t0, status))
                i += clients

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + warmup + 200)
    window = [(lat, st) for end, lat, st in done if t_measure <= end <= t_end]
    lat = np.array([x[0] for x in window if x[1] == 200]) * 1e3
    n_ok = int(len(lat))
    return {"requests": len(done), "in_window": len(window), "ok_in_window": n_ok,
            "req_s": round(n_ok / duration, 2), "img_s": round(n_ok / duration, 2),
            "p50_ms": round(float(np.percentile(lat, 50)), 1) if n_ok else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 1) if n_ok else None,
            "n_4xx": sum(1 for _, _, s in done if 400 <= s < 500),
            "n_5xx": sum(1 for _, _, s in done if s >= 500)}


def serve_config(folder: Path, images: list[str], *, batch: int, max_wait_ms: float, clients: int, warmup: float,
                 duration: float, workers: int, threads: int | None = None) -> dict:
    server = Server(folder, batch, max_wait_ms, workers, threads)
    try:
        server.wait_ready()
        load0 = os.getloadavg()[0]
        stats = run_clients(server.url, images, clients, warmup, duration)
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
    finally:
        rc = server.stop()
    count = sum_ = 0.0
    for line in metrics.splitlines():
        if line.startswith('siglite_batch_size_count{modality="image"'):
            count = float(line.rsplit(" ", 1)[1])
        elif line.startswith('siglite_batch_size_sum{modality="image"'):
            sum_ = float(line.rsplit(" ", 1)[1])
    return {**stats, "max_batch_size": batch, "max_wait_ms": max_wait_ms, "clients": clients,
            "mean_batch": round(sum_ / count, 2) if count else None, "sigterm_exit_code": rc,
            "loadavg_1m": round((load0 + os.getloadavg()[0]) / 2, 2)}


def bench_model_only(folder: Path, batch: int, iters: int, threads: int | None = None) -> dict:
    from siglite.tasks.bench import bench

    rec = bench(folder, batch_sizes=(batch,), modes=("model",), iters=iters, warmup=1, device="cpu",
                threads=threads)[0]
    return {"img_s": round(rec["throughput_img_s"], 2), "p50_ms_per_batch": round(rec["latency_ms_p50"], 1),
            "batch_size": rec["batch_size"], "threads": rec.get("threads"), "loadavg_1m": round(os.getloadavg()[0], 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["tiny", "base"], choices=["tiny", "base"])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--duration", type=float, default=25.0, help="measured seconds per configuration")
    p.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds before the window")
    p.add_argument("--batch", type=int, default=8, help="dynamic batching's --max-batch-size (and bench's batch)")
    p.add_argument("--max-wait-ms", type=float, default=50.0)
    p.add_argument("--workers", type=int, default=2, help="server decode threads")
    p.add_argument("--threads", type=int, default=None, help="torch threads, server and bench (default: torch's)")
    p.add_argument("--bench-iters", type=int, default=4)
    p.add_argument("--json", default=None, help="write the records here")
    args = p.parse_args(argv)

    from siglite.tasks.bench import synthetic_images

    jpegs = synthetic_images(16)  # 640x480 photo-like JPEGs, as `siglite bench --mode e2e`
    images = [f"data:image/jpeg;base64,{base64.b64encode(b).decode()}" for b in jpegs]
    records = []
    with tempfile.TemporaryDirectory(prefix="siglite-serve-load-") as tmp:
        for name in args.models:
            folder = FIXTURE if name == "tiny" else _random_checkpoint("siglip-base-patch16-224", Path(tmp) / "base")
            row = {"model": name, "image_size": "32x32" if name == "tiny" else "224x224"}
            if name == "base":
                row["bench_model_only"] = bench_model_only(folder, args.batch, args.bench_iters, args.threads)
                print(f"[{name}] siglite bench model-only, batch {args.batch}: {row['bench_model_only']}", flush=True)
            for batch in (args.batch, 1):
                rec = serve_config(folder, images, batch=batch, max_wait_ms=args.max_wait_ms, clients=args.clients,
                                   warmup=args.warmup, duration=args.duration, workers=args.workers,
                                   threads=args.threads)
                row[f"serve_batch{batch}"] = rec
                print(f"[{name}] serve --max-batch-size {batch}: {rec}", flush=True)
            dyn, one = row[f"serve_batch{args.batch}"], row["serve_batch1"]
            row["batching_gain"] = round(dyn["img_s"] / one["img_s"], 2) if one["img_s"] else None
            if "bench_model_only" in row:
                row["served_vs_bench"] = round(dyn["img_s"] / row["bench_model_only"]["img_s"], 3)
            records.append(row)

    print("\n| model | config | clients | img/s (= req/s) | p50 ms | p99 ms | mean batch | 5xx | SIGTERM rc "
          "| load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in records:
        if "bench_model_only" in row:
            b = row["bench_model_only"]
            print(f"| {row['model']} | `siglite bench` model-only, batch {b['batch_size']} | – | {b['img_s']} | "
                  f"{b['p50_ms_per_batch']} / batch | | | | | {b['loadavg_1m']} |")
        for batch in (args.batch, 1):
            r = row[f"serve_batch{batch}"]
            print(f"| {row['model']} | serve --max-batch-size {batch} | {r['clients']} | {r['img_s']} | "
                  f"{r['p50_ms']} | "
                  f"{r['p99_ms']} | {r['mean_batch']} | {r['n_5xx']} | {r['sigterm_exit_code']} | {r['loadavg_1m']} |")
    print()
    for row in records:
        extra = f", served / bench = {row['served_vs_bench']:.1%}" if "served_vs_bench" in row else ""
        print(f"{row['model']}: dynamic batching gain over --max-batch-size 1 = {row['batching_gain']}x{extra}")
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=2))
    ok = all(row[k]["n_5xx"] == 0 for row in records for k in row if k.startswith("serve_"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
