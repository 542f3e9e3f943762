"""Inference speed and memory of a spaCy pipeline beside the same encoder used directly.

Three systems annotate the same texts, in the same batches, with the same thread count:

- `pipeline`: `spacy.load(model)`, then `list(nlp.pipe(texts, batch_size=B))`.
- `hf`: what a user might pick instead: a fast tokenizer and `AutoModelForTokenClassification`
  on the same encoder (random head: only its speed counts), tokenization included, an argmax
  per wordpiece, truncated to `max_length` wordpieces.
- `floor`: the bare encoder (`AutoModel`) forward pass on batches tokenized beforehand: what
  no pipeline built on that encoder can beat.

Each system lives in its own interpreter, so its peak memory is its own and it imports only
what its user would. `run_benchmark` drives the workers over JSON lines and interleaves the
repeats (A B C, B C A, C A B, ...) to spread machine noise over all systems. Run as a file
(`python benchmark.py --worker SPEC SYSTEM`), this module is one worker; it is started by path,
not as `spacy_secner.benchmark`, so that the Hugging Face workers never import spaCy.
"""

import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

SYSTEMS = ("pipeline", "hf", "floor")
LABELS = {
    "pipeline": "pipeline (nlp.pipe)",
    "hf": "HF token classification",
    "floor": "bare encoder forward",
}
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS")


def read_test_sentences(path: Path, *, limit: int = 0) -> List[str]:
    """The sentences of a DNRTI file as raw text (tokens joined with normal English spacing).

    limit (int): Keep the first N sentences; 0 keeps all.
    """
    from spacy_secner.data import read_sentences
    from spacy_secner.detokenize import join_tokens

    texts = [join_tokens(words)[0] for words, _ in read_sentences(path)]
    return texts[:limit] if limit else texts


def make_documents(sentences: Sequence[str], n_docs: int) -> List[str]:
    """Consecutive sentences joined into `n_docs` documents whose sentence counts differ by at
    most one. DNRTI's sentences are shuffled, so these documents only have realistic lengths."""
    if not sentences:
        return []
    n_docs = max(1, min(n_docs, len(sentences)))
    size, extra = divmod(len(sentences), n_docs)
    docs, start = [], 0
    for i in range(n_docs):
        end = start + size + (i < extra)
        docs.append(" ".join(sentences[start:end]))
        start = end
    return docs


def count_words(texts: Sequence[str]) -> int:
    """Whitespace-separated words: one count for every system, so that ratios are fair."""
    return sum(len(text.split()) for text in texts)


def batches(items: Sequence[Any], size: int) -> List[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def rss_mb() -> Optional[float]:
    """Current resident memory of this process in MiB (VmRSS), None without /proc."""
    return _proc_status_mb("VmRSS")


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB: VmHWM, or ru_maxrss without /proc."""
    peak = _proc_status_mb("VmHWM")
    if peak is None:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return peak


def reset_peak_rss() -> bool:
    """Restart the peak (VmHWM) from the current RSS. RETURNS (bool): whether the kernel let us."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _proc_status_mb(field: str) -> Optional[float]:
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return None


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


def thread_env(threads: int) -> Dict[str, str]:
    """The environment of a worker: the same thread count for OpenMP, MKL and the tokenizers'
    Rust pool, and no network for Hugging Face."""
    env = {**os.environ, **{var: str(threads) for var in THREAD_VARS}}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return env


# --- The systems, as run inside a worker -------------------------------------------------------


class _Pipeline:
    def __init__(self, spec: Dict[str, Any]) -> None:
        import spacy

        self.nlp = spacy.load(spec["model"])

    def about(self) -> Dict[str, Any]:
        """The settings that decide the speed: pipes, and each pipe's cfg but its labels."""
        cfgs = {
            name: {k: v for k, v in getattr(pipe, "cfg", {}).items() if k != "labels"}
            for name, pipe in self.nlp.pipeline
        }
        return {"pipe_names": self.nlp.pipe_names, "pipe_cfg": cfgs}

    def prepare(self, texts: List[str], batch_size: int) -> Any:
        return texts, batch_size

    def run(self, prepared: Any) -> Any:
        texts, batch_size = prepared
        return list(self.nlp.pipe(texts, batch_size=batch_size))

    def describe(self, prepared: Any, docs: Any) -> Dict[str, Any]:
        wordpieces = inputs = 0
        for doc in docs:
            trf = getattr(doc._, "trf_data", None)
            if trf is not None:
                wordpieces += sum(trf.wordpieces.lengths)
                inputs += len(trf.wordpieces.lengths)
        return {
            "tokens": sum(len(doc) for doc in docs),
            "entities": sum(len(doc.ents) for doc in docs),
            "wordpieces": wordpieces,
            "encoder_inputs": inputs,
        }


class _HFTokenClassifier:
    def __init__(self, spec: Dict[str, Any]) -> None:
        import torch
        from transformers import AutoTokenizer

        self.torch = torch
        self.max_length = spec["max_length"]
        self.tokenizer = AutoTokenizer.from_pretrained(spec["encoder"], use_fast=True)
        self.model = self._load_model(spec)
        self.model.eval()

    def _load_model(self, spec: Dict[str, Any]) -> Any:
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification.from_pretrained(
            spec["encoder"], num_labels=spec["num_labels"]
        )

    def encode(self, texts: Sequence[str]) -> Any:
        return self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )

    def prepare(self, texts: List[str], batch_size: int) -> Any:
        return texts, batches(texts, batch_size)

    def run(self, prepared: Any) -> Any:
        with self.torch.inference_mode():
            return [self.model(**self.encode(b)).logits.argmax(-1) for b in prepared[1]]

    def describe(self, prepared: Any, output: Any) -> Dict[str, Any]:
        texts, text_batches = prepared[0], prepared[1]
        full = self.tokenizer(list(texts), truncation=False)["input_ids"]
        encoded = [self.encode(b)["attention_mask"] for b in text_batches]
        return {
            "wordpieces": int(sum(int(m.sum()) for m in encoded)),
            "padded_wordpieces": int(sum(m.numel() for m in encoded)),
            "encoder_inputs": len(texts),
            "truncated_texts": sum(len(ids) > self.max_length for ids in full),
            "wordpieces_untruncated": sum(len(ids) for ids in full),
        }


class _EncoderFloor(_HFTokenClassifier):
    def _load_model(self, spec: Dict[str, Any]) -> Any:
        from transformers import AutoModel

        return AutoModel.from_pretrained(spec["encoder"])

    def prepare(self, texts: List[str], batch_size: int) -> Any:
        text_batches = batches(texts, batch_size)
        return texts, text_batches, [self.encode(b) for b in text_batches]

    def run(self, prepared: Any) -> Any:
        with self.torch.inference_mode():
            return [self.model(**encoding).last_hidden_state for encoding in prepared[2]]


_WORKER_SYSTEMS: Dict[str, Callable[[Dict[str, Any]], Any]] = {
    "pipeline": _Pipeline,
    "hf": _HFTokenClassifier,
    "floor": _EncoderFloor,
}


def _worker(spec_path: str, system: str) -> None:
    """Load one system, then answer `run` requests on stdin with timings on stdout."""
    spec = json.loads(Path(spec_path).read_text(encoding="utf8"))
    # Libraries print to stdout now and then: keep the real stdout for the protocol only.
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def send(message: Dict[str, Any]) -> None:
        protocol.write(json.dumps(message) + "\n")

    import torch

    torch.set_num_threads(spec["threads"])
    start = time.perf_counter()
    impl = _WORKER_SYSTEMS[system](spec)
    load_s = time.perf_counter() - start
    torch.set_num_threads(spec["threads"])
    send(
        {
            "load_s": load_s,
            "rss_after_load_mb": rss_mb(),
            "peak_rss_load_mb": peak_rss_mb(),
            "torch_threads": torch.get_num_threads(),
            "about": impl.about() if hasattr(impl, "about") else {},
        }
    )
    prepared: Dict[Any, Any] = {}
    for line in sys.stdin:
        request = json.loads(line)
        if request["cmd"] == "quit":
            send({"peak_rss_mb": peak_rss_mb()})
            return
        key = (request["texts"], request["batch_size"])
        if key not in prepared:
            prepared[key] = impl.prepare(spec["texts"][key[0]], key[1])
        gc.collect()
        was_reset = reset_peak_rss()
        start = time.perf_counter()
        output = impl.run(prepared[key])
        seconds = time.perf_counter() - start
        reply: Dict[str, Any] = {"seconds": seconds, "peak_rss_mb": peak_rss_mb()}
        reply["peak_is_per_run"] = was_reset
        if request.get("describe"):
            reply["info"] = impl.describe(prepared[key], output)
        del output
        send(reply)


class _WorkerProcess:
    """The parent's handle on one worker."""

    def __init__(self, system: str, spec_path: Path, threads: int, log_path: Path) -> None:
        self.system = system
        self.log_path = log_path
        self._log = log_path.open("w", encoding="utf8")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path), system],
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
    log: Callable[[str], None] = print,
) -> Dict[str, Any]:
    """Time every system on every text set and batch size: one warm-up, then `repeats` runs.

    texts (Dict[str, List[str]]): Named text sets, e.g. "sentences" and "documents".
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
                    for repeat in range(repeats):
                        for system in rotate(systems, repeat):
                            reply = workers[system].ask(**request)
                            seconds[system].append(reply["seconds"])
                            run_peaks[system].append(reply["peak_rss_mb"])
                            per_run = per_run and reply["peak_is_per_run"]
                    row["systems"] = {
                        s: {
                            **summarize(seconds[s], words),
                            "peak_rss_mb": max(run_peaks[s]),
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
    for other in ("hf", "floor"):
        if other in by_system:
            for stat, suffix in (("wps_median", ""), ("wps_best", "_best")):
                den = by_system[other][stat]
                out[f"pipeline/{other}{suffix}"] = pipe[stat] / den if den else None
    return out


def _progress_line(row: Dict[str, Any]) -> str:
    parts = [f"{s} {v['wps_median']:,.0f} w/s" for s, v in row["systems"].items()]
    parts += [f"{k} {v:.2f}" for k, v in row["ratios"].items() if "_best" not in k and v]
    return f"{row['texts']} batch {row['batch_size']}: " + ", ".join(parts)


def _load_probe(model: str) -> None:
    """Print how long `import spacy` and `spacy.load(model)` take in this fresh interpreter."""
    start = time.perf_counter()
    import spacy

    imported = time.perf_counter()
    spacy.load(model)
    loaded = time.perf_counter()
    result = {"import_s": imported - start, "load_s": loaded - imported}
    print(json.dumps({**result, "peak_rss_mb": peak_rss_mb()}))


def measure_load(model: str, *, runs: int = 3, threads: int) -> Dict[str, Any]:
    """`spacy.load(model)` in `runs` fresh interpreters. RETURNS (Dict[str, Any]): each run's
    `import spacy` and `spacy.load` seconds and whole-process wall time, and their medians."""
    results = []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--load", model],
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
    return {"runs": results, **medians}


def training_speed(path: Path) -> Optional[Dict[str, Any]]:
    """Training words/s from a `spacy-secner.curve_logger.v1` file, between its first and last
    record (so evaluation time, dev scoring and dev loss, is included). None without the file."""
    path = Path(path)
    if not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text(encoding="utf8").splitlines() if line]
    records = [r for r in records if "words" in r and "seconds" in r]
    if not records:
        return None
    first, last = records[0], records[-1]
    words, seconds = last["words"] - first["words"], last["seconds"] - first["seconds"]
    if seconds <= 0:  # a single record: count from the start of training
        words, seconds = last["words"], last["seconds"]
    return {
        "path": str(path),
        "records": len(records),
        "steps": last.get("step", 0) - first.get("step", 0),
        "words": words,
        "seconds": seconds,
        "words_per_second": words / seconds if seconds > 0 else None,
        "note": "spaCy tokens of the training data; includes evaluation time",
    }


def spacy_benchmark_command(
    model: str, corpus: Path, *, batch_size: int, n_batches: int, warmup: int = 1
) -> List[str]:
    """The `spacy benchmark speed` command line (`--batches` must be at least 30)."""
    options = {"--batch-size": batch_size, "--batches": n_batches, "--warmup": warmup}
    command = ["python", "-m", "spacy", "benchmark", "speed", model, str(corpus)]
    for option, value in options.items():
        command += [option, str(value)]
    return command + ["--no-shuffle"]


def parse_spacy_benchmark(output: str) -> Optional[float]:
    """The mean words/s that `spacy benchmark speed` prints, None if it printed none."""
    found = re.search(r"Mean: ([0-9.]+) words/s", output)
    return float(found.group(1)) if found else None


def run_spacy_benchmark(command: List[str], *, threads: int) -> Dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, *command[1:]], capture_output=True, text=True, env=thread_env(threads)
    )
    output = proc.stdout + proc.stderr
    return {
        "command": " ".join(command),
        "returncode": proc.returncode,
        "words_per_second": parse_spacy_benchmark(output),
        "note": "words are the pipeline's own tokens; mean of per-batch rates",
        "output_tail": output[-1500:],
    }


def machine_info(threads: int) -> Dict[str, Any]:
    """CPU, cores, memory, library versions and the thread count used."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = _proc_meminfo_gib()
    versions = {}
    for dist in ("torch", "transformers", "tokenizers", "spacy", "spacy-transformers", "thinc"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": affinity,
        "memory_gib": memory,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "threads": threads,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _proc_meminfo_gib() -> Optional[float]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


# --- Targets, report, profile ------------------------------------------------------------------

# The targets (embedded MiniLM, CPU): ratios at batch 64, memory in MiB (1 GiB), seconds.
TARGET_FLOOR_RATIO = 0.85
TARGET_HF_RATIO = 1.0
TARGET_PEAK_RSS_MB = 1024.0
TARGET_LOAD_S = 3.0


def check_targets(report: Dict[str, Any], *, batch_size: int = 64) -> List[Dict[str, Any]]:
    """Each target of the issue with the measured value and whether it is met."""
    wanted = []  # (target, value, limit, higher is better)
    for row in report.get("throughput", []):
        where = f"{row['texts']}, batch {batch_size}"
        for key, name, limit in (
            ("pipeline/floor", "bare encoder", TARGET_FLOOR_RATIO),
            ("pipeline/hf", "HF", TARGET_HF_RATIO),
        ):
            if row["batch_size"] == batch_size and key in row["ratios"]:
                target = f"pipeline / {name} >= {limit} ({where})"
                wanted.append((target, row["ratios"][key], limit, True))
    pipeline = report.get("systems", {}).get("pipeline")
    if pipeline:
        target = f"peak RSS while annotating <= {TARGET_PEAK_RSS_MB:.0f} MiB"
        wanted.append((target, pipeline["peak_rss_annotating_mb"], TARGET_PEAK_RSS_MB, False))
    if report.get("spacy_load"):
        target = f"spacy.load < {TARGET_LOAD_S} s"
        wanted.append((target, report["spacy_load"]["median_load_s"], TARGET_LOAD_S, False))
    checks = []
    for target, value, limit, higher in wanted:
        met = None if value is None else (value >= limit if higher else value <= limit)
        checks.append({"target": target, "value": value, "met": met})
    return checks


MEMORY_COLUMNS = (
    "system",
    "load in its worker (s)",
    "RSS after load (MiB)",
    "peak RSS annotating (MiB)",
    "peak RSS overall (MiB)",
)


def render_markdown(report: Dict[str, Any]) -> str:
    """The report as Markdown for BENCHMARKS.md: command, machine, tables and notes."""
    settings, machine = report["settings"], report["machine"]
    versions = machine["versions"]
    out = [
        f"Command: `{report['command']}`",
        "",
        f"Machine: {machine['cpu']}, {machine['usable_cores']} usable cores "
        f"({machine['logical_cores']} logical), {machine['memory_gib']} GiB RAM; "
        f"{machine['threads']} torch/OpenMP threads in every process; torch {versions['torch']}, "
        f"transformers {versions['transformers']}, spaCy {versions['spacy']}, spacy-transformers "
        f"{versions['spacy-transformers']}; load average at start "
        + ", ".join(f"{x:.2f}" for x in machine["load_average"] or []),
        "",
        f"Pipeline `{settings['model']}`, encoder `{settings['encoder']}`. Texts: "
        + "; ".join(
            f"{name} ({v['texts']} texts, {v['words']:,} words)"
            for name, v in settings["texts"].items()
        )
        + ". Words/s count the whitespace words of the raw text for every system. Median of "
        f"{settings['repeats']} runs after one warm-up, best run in brackets; repeats interleaved "
        "across systems, each system in its own process.",
        "",
    ]
    systems = list(report["systems"])
    head = ["texts", "batch", *(LABELS[s] for s in systems)]
    ratio_keys = [k for k in ("pipeline/hf", "pipeline/floor") if k.split("/")[1] in systems]
    ratio_keys = ratio_keys if "pipeline" in systems else []
    head += [
        {"pipeline/hf": "pipeline / HF", "pipeline/floor": "pipeline / encoder"}[k]
        for k in ratio_keys
    ]
    out += [_md_row(head), _md_row(["---", "---:"] + ["---:"] * (len(head) - 2))]
    for row in report["throughput"]:
        cells = [row["texts"], str(row["batch_size"])]
        for s in systems:
            v = row["systems"][s]
            cells.append(f"{v['wps_median']:,.0f} ({v['wps_best']:,.0f})")
        for k in ratio_keys:
            best = row["ratios"].get(k + "_best")
            cells.append(f"{row['ratios'][k]:.2f} ({best:.2f})")
        out.append(_md_row(cells))
    out += ["", _md_row(MEMORY_COLUMNS), _md_row(["---"] + ["---:"] * 4)]
    for v in report["systems"].values():
        annotating = v["peak_rss_annotating_mb"]
        cells = [v["label"], f"{v['load_s']:.2f}", f"{v['rss_after_load_mb']:.0f}"]
        cells += [f"{annotating:.0f}" if annotating else "-", f"{v['peak_rss_mb']:.0f}"]
        out.append(_md_row(cells))
    out.append("")
    load = report.get("spacy_load")
    if load:
        out.append(
            f"- `spacy.load` in a fresh process: {load['median_load_s']:.2f} s (median of "
            f"{len(load['runs'])}; `import spacy` before it {load['median_import_s']:.2f} s, whole "
            f"process {load['median_process_s']:.2f} s)."
        )
    train = report.get("training")
    if train and train.get("words_per_second"):
        out.append(
            f"- Training: {train['words_per_second']:,.0f} words/s ({train['words']:,} words in "
            f"{train['seconds']} s over {train['steps']} steps, from `{train['path']}`; "
            "includes evaluation time; words are spaCy tokens; training uses the config's own "
            "thread setting)."
        )
    bench = report.get("spacy_benchmark")
    if bench:
        wps = bench["words_per_second"]
        result = f"{wps:,.0f} words/s (words: the pipeline's tokens)" if wps else "failed"
        out.append(f"- `{bench['command']}`: {result} (exit {bench['returncode']}).")
    pipe_cfg = report["systems"].get("pipeline", {}).get("pipe_cfg")
    if pipe_cfg:
        cfgs = "; ".join(f"{name} {json.dumps(cfg)}" for name, cfg in pipe_cfg.items())
        out.append(f"- Pipeline settings as loaded: {cfgs}.")
    for name in settings["texts"]:
        out.append(f"- Encoder work on {name}: " + _encoder_work(report, name, systems) + ".")
    if "documents" in settings["texts"]:
        out.append(
            "- Documents are consecutive test sentences joined into ~"
            f"{settings['texts']['documents']['sentences_per_doc']:.0f}-sentence texts. DNRTI's "
            "sentences are shuffled, so these documents are synthetic: used for length only."
        )
    targets = report.get("targets") or []
    if targets:
        out += ["", _md_row(["target", "measured", "met"]), _md_row(["---", "---:", "---"])]
        for t in targets:
            value = "-" if t["value"] is None else f"{t['value']:.2f}".rstrip("0").rstrip(".")
            met = {True: "yes", False: "**no**", None: "-"}[t["met"]]
            out.append(_md_row([t["target"], value, met]))
    return "\n".join(out) + "\n"


def _encoder_work(report: Dict[str, Any], texts: str, systems: Sequence[str]) -> str:
    """Wordpieces each system encodes, and the padded size of the HF/encoder batches (a pipeline
    that groups texts by length pads less, and can beat the 'floor' at batch > 1)."""
    rows = [row for row in report["throughput"] if row["texts"] == texts]
    notes = []
    for s in systems:
        info = rows[0]["systems"][s]
        pieces, inputs = info.get("wordpieces", 0), info.get("encoder_inputs", 0)
        note = f"{s} {pieces:,} wordpieces in {inputs} inputs"
        if info.get("truncated_texts"):
            note += f", {info['truncated_texts']} texts cut at {report['settings']['max_length']}"
        if "padded_wordpieces" in info:
            padded = "/".join(f"{row['systems'][s]['padded_wordpieces']:,}" for row in rows)
            batches = "/".join(str(row["batch_size"]) for row in rows)
            note += f" (padded: {padded} at batch {batches})"
        notes.append(note)
    return "; ".join(notes)


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


# Where the pipeline's time goes: (part, function names, class name, file path pattern); a frame
# is in a part if it matches every criterion given. A frame's own time counts for the last part
# that matches it or, failing that, its innermost matching caller; the rest is "other".
_TRF_ALIGN = {
    "huggingface_tokenize",
    "get_alignment",
    "get_alignment_via_offset_mapping",
    "truncate_oversize_splits",
}
PROFILE_PARTS = (
    ("spaCy tokenizer", {"make_doc"}, None, None),
    ("transformer: spans, batching, doc._.trf_data", None, None, r"spacy_transformers/"),
    ("transformer: HF tokenizer and alignment", _TRF_ALIGN, None, None),
    ("transformer: encoder forward", None, None, r"transformers/models/"),
    ("ner_crf: other (predict, padding)", None, "CRFEntityRecognizer", None),
    ("ner_crf: listener and pooling", None, None, r"layers/(listener|trfs2arrays|reduce_)"),
    ("ner_crf: listener and pooling", {"_reduce_first_forward"}, None, None),
    ("ner_crf: BiLSTM and linear", None, "BiLSTMEmitter", None),
    ("ner_crf: CRF Viterbi", {"crf_decode"}, None, None),
    ("ner_crf: CRF span confidence", {"crf_span_confidence"}, None, None),
    ("ner_crf: set_annotations", {"set_annotations"}, "CRFEntityRecognizer", None),
)


def profile_pipeline(
    nlp: Any, texts: Sequence[str], *, batch_size: int, interval: float = 0.001
) -> Dict[str, Any]:
    """Profile one `nlp.pipe` pass (after a warm-up batch) with pyinstrument.

    RETURNS (Dict[str, Any]): "seconds" (the profiled pass), "parts" (seconds per part of the
        pipeline, see PROFILE_PARTS) and "text" (pyinstrument's call tree).
    """
    from pyinstrument import Profiler

    list(nlp.pipe(texts[:batch_size], batch_size=batch_size))
    profiler = Profiler(interval=interval)
    profiler.start()
    list(nlp.pipe(texts, batch_size=batch_size))
    profiler.stop()
    session = profiler.last_session
    parts: Dict[str, float] = {}
    _attribute(session.root_frame(), "other", parts)
    return {
        "seconds": session.duration,
        "parts": dict(sorted(parts.items(), key=lambda kv: -kv[1])),
        "text": profiler.output_text(unicode=False, color=False),
    }


def _matches(frame: Any, functions: Any, class_name: Any, pattern: Any) -> bool:
    path = (frame.file_path or "").replace(os.sep, "/")
    return (
        (functions is None or frame.function in functions)
        and (class_name is None or frame.class_name == class_name)
        and (pattern is None or re.search(pattern, path) is not None)
    )


def _attribute(frame: Any, part: str, parts: Dict[str, float]) -> None:
    if frame is None:
        return
    for name, *criteria in PROFILE_PARTS:
        if _matches(frame, *criteria):
            part = name
    own = frame.time - sum(child.time for child in frame.children)
    parts[part] = parts.get(part, 0.0) + max(own, 0.0)
    for child in frame.children:
        _attribute(child, part, parts)


if __name__ == "__main__":
    # Started by path: drop this directory from the import path, or its modules (`data`,
    # `tokenizer`, ...) would shadow top-level ones.
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if p and str(Path(p).resolve()) != here]
    if sys.argv[1:2] == ["--worker"]:
        _worker(sys.argv[2], sys.argv[3])
    elif sys.argv[1:2] == ["--load"]:
        _load_probe(sys.argv[2])
    else:
        raise SystemExit(f"usage: {sys.argv[0]} --worker SPEC SYSTEM | --load MODEL")
