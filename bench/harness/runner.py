"""The benchmark's parent side: start one worker per system, time them with interleaved repeats,
and time `spacy.load` in fresh interpreters.

The workers run `workers.py` by its file path (see that module), never as a package module.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from . import workers
from .texts import count_words

SYSTEMS = ("pipeline", "hf", "floor")
# The tiny-encoder check: the pipeline beside the same model in plain PyTorch and beside an HF
# token classifier that also turns its tags into entities.
TINY_SYSTEMS = ("pipeline", "plain", "hf_spans")
LABELS = {
    "pipeline": "pipeline (nlp.pipe)",
    "hf": "HF token classification",
    "floor": "bare encoder forward",
    "plain": "plain PyTorch BiLSTM-CRF",
    "hf_spans": "HF token classification + spans",
}
# Column names of the ratios `pipeline / X`.
SHORT_LABELS = {
    "hf": "HF",
    "floor": "encoder",
    "plain": "plain PyTorch",
    "hf_spans": "HF + spans",
}
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS")

# Started by path, so that the Hugging Face workers never import spaCy.
WORKER_FILE = Path(workers.__file__).resolve()


def summarize(seconds: Sequence[float], words: int) -> Dict[str, Any]:
    """Median and best of repeated timings of the same work, in seconds and words per second."""
    median, best = statistics.median(seconds), min(seconds)
    return {
        "seconds": [round(s, 4) for s in seconds],
        "median_s": median,
        "min_s": best,
        "wps_median": words / median if median > 0 else None,
        "wps_best": words / best if best > 0 else None,
    }


def rotate(items: Sequence[str], by: int) -> List[str]:
    by %= max(len(items), 1)
    return [*items[by:], *items[:by]]


def turns(n_texts: int, batch_size: int, turn_texts: int = 0) -> List[List[int]]:
    """The [start, end) ranges of texts each system runs at its turn: whole batches of about
    `turn_texts` texts (0: one batch)."""
    step = max(batch_size, turn_texts // batch_size * batch_size)
    return [[i, min(i + step, n_texts)] for i in range(0, n_texts, step)]


def thread_env(threads: int) -> Dict[str, str]:
    """The environment of a worker: the same thread count for OpenMP, MKL and the tokenizers'
    Rust pool, and no network for Hugging Face."""
    env = {**os.environ, **{var: str(threads) for var in THREAD_VARS}}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return env


class _WorkerProcess:
    """The parent's handle on one worker."""

    def __init__(self, system: str, spec_path: Path, threads: int, log_path: Path) -> None:
        self.system = system
        self.log_path = log_path
        self._log = log_path.open("w", encoding="utf8")
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER_FILE), "--worker", str(spec_path), system],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=thread_env(threads),
        )
        self.ready = self._receive()

    def ask(self, **request: Any) -> Dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._receive()

    def close(self) -> Dict[str, Any]:
        final = self.ask(cmd="quit")
        self.proc.wait(timeout=60)
        self._log.close()
        return final

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def _receive(self) -> Dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            tail = self.log_path.read_text(encoding="utf8", errors="replace")[-3000:]
            raise RuntimeError(f"The {self.system} worker stopped:\n{tail}")
        return json.loads(line)


def run_benchmark(
    *,
    model: str,
    encoder: str,
    texts: Dict[str, List[str]],
    batch_sizes: Sequence[int],
    repeats: int,
    threads: int,
    systems: Sequence[str] = SYSTEMS,
    num_labels: int = 27,
    max_length: int = 512,
    gpu_id: int = -1,
    interleave: bool = False,
    turn_texts: int = 0,
    log: Callable[[str], None] = print,
) -> Dict[str, Any]:
    """Time every system on every text set and batch size: one warm-up, then `repeats` runs.

    texts (Dict[str, List[str]]): Named text sets, e.g. "sentences" and "documents".
    interleave (bool): Time each run batch by batch, the systems taking turns at every batch,
        and add the batches up: on a shared machine whose load changes within seconds, every
        system then sees the same load. Each system still gets the same batches as one run.
    turn_texts (int): With `interleave`, each turn runs whole batches of about this many texts
        (0: one batch): at batch 1, a turn per text would leave every text to caches the other
        system has just filled.
    RETURNS (Dict[str, Any]): "systems" (load time and memory per system) and "throughput"
        (per text set and batch size: words, timings, words/s and ratios to the pipeline).
    """
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    spec = {
        "model": model,
        "encoder": encoder,
        "threads": threads,
        "num_labels": num_labels,
        "max_length": max_length,
        "gpu_id": gpu_id,
        "texts": texts,
    }
    throughput = []
    with tempfile.TemporaryDirectory(prefix="secner-bench-") as tmp:
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec), encoding="utf8")
        workers: Dict[str, _WorkerProcess] = {}
        try:
            # One at a time, so that no load competes with another for the CPU.
            for system in systems:
                log(f"loading {system} ...")
                workers[system] = _WorkerProcess(system, spec_path, threads, Path(tmp) / system)
            peaks: Dict[str, List[float]] = {system: [] for system in systems}
            per_run = True  # False where the kernel cannot reset the peak: peaks are lifetime
            for name, set_texts in texts.items():
                words = count_words(set_texts)
                for batch_size in batch_sizes:
                    row: Dict[str, Any] = {"texts": name, "batch_size": batch_size, "words": words}
                    request = {"cmd": "run", "texts": name, "batch_size": batch_size}
                    infos = {s: workers[s].ask(**request, describe=True)["info"] for s in systems}
                    seconds: Dict[str, List[float]] = {s: [] for s in systems}
                    run_peaks: Dict[str, List[float]] = {s: [] for s in systems}
                    gpu_peaks: Dict[str, List[float]] = {s: [] for s in systems}
                    parts: List[Any] = [None]
                    if interleave:
                        parts = turns(len(set_texts), batch_size, turn_texts)
                    for repeat in range(repeats):
                        for system in systems:
                            seconds[system].append(0.0)
                        for k, part in enumerate(parts):
                            for system in rotate(systems, repeat + k):
                                reply = workers[system].ask(**request, part=part)
                                seconds[system][-1] += reply["seconds"]
                                run_peaks[system].append(reply["peak_rss_mb"])
                                if "peak_gpu_mb" in reply:
                                    gpu_peaks[system].append(reply["peak_gpu_mb"])
                                per_run = per_run and reply["peak_is_per_run"]
                    row["systems"] = {
                        s: {
                            **summarize(seconds[s], words),
                            "peak_rss_mb": max(run_peaks[s]),
                            "peak_gpu_mb": max(gpu_peaks[s]) if gpu_peaks[s] else None,
                            **infos[s],
                        }
                        for s in systems
                    }
                    row["ratios"] = ratios(row["systems"])
                    for s in systems:
                        peaks[s].append(max(run_peaks[s]))
                    log(_progress_line(row))
                    throughput.append(row)
            finals = {s: workers[s].close() for s in systems}
        finally:
            for worker in workers.values():
                worker.kill()
    system_info = {}
    for s in systems:
        ready = workers[s].ready
        system_info[s] = {
            "label": LABELS[s],
            "load_s": ready["load_s"],
            "torch_threads": ready["torch_threads"],
            "gpu": ready.get("gpu"),
            **ready["about"],
            "rss_after_load_mb": ready["rss_after_load_mb"],
            "peak_rss_annotating_mb": max(peaks[s]) if peaks[s] and per_run else None,
            "peak_rss_mb": max([ready["peak_rss_load_mb"], finals[s]["peak_rss_mb"], *peaks[s]]),
        }
    return {"systems": system_info, "throughput": throughput}


def ratios(by_system: Dict[str, Dict[str, Any]]) -> Dict[str, Optional[float]]:
    """Pipeline words/s over the other systems' (medians, and best runs)."""
    out: Dict[str, Optional[float]] = {}
    if "pipeline" not in by_system:
        return out
    pipe = by_system["pipeline"]
    for other in by_system:
        if other != "pipeline":
            for stat, suffix in (("wps_median", ""), ("wps_best", "_best")):
                den = by_system[other][stat]
                out[f"pipeline/{other}{suffix}"] = pipe[stat] / den if den else None
    return out


def _progress_line(row: Dict[str, Any]) -> str:
    parts = [f"{s} {v['wps_median']:,.0f} w/s" for s, v in row["systems"].items()]
    parts += [f"{k} {v:.2f}" for k, v in row["ratios"].items() if "_best" not in k and v]
    return f"{row['texts']} batch {row['batch_size']}: " + ", ".join(parts)


def measure_load(
    model: str, *, runs: int = 3, threads: int, gpu_id: int = -1, python: str = ""
) -> Dict[str, Any]:
    """`spacy.load(model)` in `runs` fresh interpreters. RETURNS (Dict[str, Any]): each run's
    `import spacy` and `spacy.load` seconds and whole-process wall time, and their medians.

    python (str): The interpreter to time it in (default: this one), e.g. that of a virtual
        environment holding only what the packaged pipeline needs.
    """
    results = []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(
            [python or sys.executable, str(WORKER_FILE), "--load", model, str(gpu_id)],
            capture_output=True,
            text=True,
            env=thread_env(threads),
        )
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"spacy.load({model!r}) failed:\n{proc.stderr[-3000:]}")
        results.append({**json.loads(proc.stdout.strip().splitlines()[-1]), "process_s": wall})
    medians = {
        f"median_{key}": statistics.median(r[key] for r in results)
        for key in ("import_s", "load_s", "process_s")
    }
    return {"python": python or sys.executable, "runs": results, **medians}
