"""oneDNN's primitive cache: what the pipeline's BiLSTM adds to a process's memory as it meets
input shapes, with the package's bound on the cache and with oneDNN's default.

Each setting runs in a fresh interpreter (oneDNN reads the cache's capacity once, at its first
primitive): the BiLSTM of `BiLSTMEmitter` (the shipped sizes: 384 inputs, 256 units each way)
reads one sequence of each length from 1 to `shapes`, twice. The first pass compiles a
primitive per length; the second shows what the bound costs once there are more lengths than
the cache holds (each dropped one is compiled again).
"""
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, Optional, Sequence

from spacy_secner.onednn import CAPACITY_VARIABLES


def measure_capacity(capacity: Optional[int], shapes: int, threads: int) -> Dict[str, Any]:
    """RSS and time of the BiLSTM over `shapes` lengths in a fresh interpreter: with oneDNN's
    cache at `capacity`, or None for what importing spacy_secner sets."""
    env = {k: v for k, v in os.environ.items() if k not in CAPACITY_VARIABLES}
    if capacity is not None:
        env[CAPACITY_VARIABLES[0]] = str(capacity)
    command = [sys.executable, __file__, str(shapes), str(threads)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"the measuring process failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def render_capacities(rows: Sequence[Dict[str, Any]]) -> str:
    lines = [
        "| cache capacity | lengths | RSS added, first pass (MiB) | after the second (MiB) "
        "| ms per sequence, first pass | second pass |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['capacity']} | {r['shapes']} | {r['rss_added_mb']:.0f} | "
            f"{r['rss_added_after_second_mb']:.0f} | "
            f"{r['first_ms']:.2f} | {r['second_ms']:.2f} |"
        )
    return "\n".join(lines)


def _worker(shapes: int, threads: int) -> None:
    import spacy_secner  # noqa: F401  (sets the bound, unless the variable is set)

    import torch
    from workers import rss_mb  # this file runs by path, beside workers.py

    from spacy_secner.pytorch_bilstm_crf import BiLSTMEmitter

    torch.set_num_threads(threads)
    capacity = next(os.environ[name] for name in CAPACITY_VARIABLES if name in os.environ)
    torch.manual_seed(0)
    emitter = BiLSTMEmitter(384, 27, hidden_size=256, depth=1, dropout=0.0).eval()
    inputs = [(torch.randn(1, n, 384), torch.tensor([n])) for n in range(1, shapes + 1)]
    with torch.no_grad():
        emitter(*inputs[0])  # libraries' own first-call allocations, before the baseline
        before = rss_mb()
        seconds, added = [], []
        for _ in range(2):
            start = time.perf_counter()
            for X, lengths in inputs:
                emitter(X, lengths)
            seconds.append(time.perf_counter() - start)
            added.append(rss_mb() - before)
    print(
        json.dumps(
            {
                "capacity": int(capacity),
                "shapes": shapes,
                "threads": threads,
                "rss_added_mb": added[0],
                "rss_added_after_second_mb": added[1],
                "first_ms": 1000 * seconds[0] / shapes,
                "second_ms": 1000 * seconds[1] / shapes,
            }
        )
    )


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]))
