"""What the report sets beside the benchmark: training words/s, `spacy benchmark speed`, and the
machine it ran on."""

import json
import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Optional

from .runner import thread_env


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
    model: str, corpus: Path, *, batch_size: int, n_batches: int, warmup: int = 1, gpu_id: int = -1
) -> List[str]:
    """The `spacy benchmark speed` command line (`--batches` must be at least 30)."""
    options = {"--batch-size": batch_size, "--batches": n_batches, "--warmup": warmup}
    if gpu_id >= 0:
        options["--gpu-id"] = gpu_id
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


def _gpu_name(gpu_id: int) -> Any:
    if gpu_id < 0:
        return None
    import torch

    return torch.cuda.get_device_name(gpu_id)


def machine_info(threads: int, gpu_id: int = -1) -> Dict[str, Any]:
    """CPU, cores, memory, GPU (when one is used), library versions and the thread count."""
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
        "gpu": _gpu_name(gpu_id),
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
