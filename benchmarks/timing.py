"""Round-robin timing shared by the benchmarks: every engine runs once in turn, so load from other processes hits all
of them alike."""

from __future__ import annotations

import time


def interleaved(fns: dict, arg, rounds: int) -> dict[str, dict[str, list[float]]]:
    """Wall (`time.perf_counter`) and CPU (`time.process_time`, this process, all threads) seconds of each call of
    each callable on `arg`, `rounds` rounds after one warm-up call each: {name: {"wall": [...], "cpu": [...]}}."""
    for fn in fns.values():
        fn(arg)
    out: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            w, c = time.perf_counter(), time.process_time()
            fn(arg)
            out[name]["wall"].append(time.perf_counter() - w)
            out[name]["cpu"].append(time.process_time() - c)
    return out
