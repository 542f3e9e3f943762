"""Documents/s of `secner annotate --engine ray` with 1 and 2 actors beside the in-process run
(the engine's overhead on one machine), and the memory of each actor.

    python bench/bench_distributed.py --config configs/minilm_cpu.cfg --docs 200 \\
        --output benchmarks/distributed.json

The pipeline is built from `--config` and initialised on a few DNRTI training sentences without
training (speed does not depend on the weights), then saved with `to_disk`; every run loads it
from there. The documents are consecutive DNRTI test sentences joined into `--docs` documents,
read from one JSONL file. Each run is its own process, so that its memory is its own: the
in-process engine (PyTorch's default threads, and one thread), then Ray on a new local cluster
of `--cpus` CPUs with 1 and 2 actors (Ray gives each actor one thread). Every run must write the
same records, or the benchmark stops.

Times: `total_s` runs from the start of the run to the last record: `spacy.load` included in
process, the actors' start and load included on Ray; the Ray cluster's own start (`cluster_s`)
is not, as a cluster normally runs already. `first_record_s` is when the first record came back
(on Ray, records come back in input order, so in bursts).
"""

import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import typer

import harness

app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)

ACTOR_TITLE = "ray::MapWorker(MapBatches(PipelineActor))"


def build_pipeline(config: Path, train: Path, path: Path, *, sentences: int = 32) -> None:
    """The pipeline of `config`, initialised on the first `sentences` sentences of `train`."""
    import spacy
    from spacy.tokens import Doc
    from spacy.training import Example

    from spacy_secner import data

    nlp = spacy.util.load_model_from_config(spacy.util.load_config(config), auto_fill=True)
    examples = []
    for words, tags in itertools.islice(data.read_sentences(train), sentences):
        reference = Doc(nlp.vocab, words=words, ents=tags)
        examples.append(Example(Doc(nlp.vocab, words=words), reference))
    nlp.initialize(lambda: examples)
    nlp.to_disk(path)


class ActorMemory:
    """Samples the resident memory of this machine's Ray actors running the pipeline."""

    def __init__(self, every_s: float = 0.5) -> None:
        self.every_s = every_s
        self.peak_mb: Dict[int, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "ActorMemory":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.sample()
        self.stop.set()
        self.thread.join()

    def _run(self) -> None:
        while not self.stop.wait(self.every_s):
            self.sample()

    def sample(self) -> None:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                title = (proc / "cmdline").read_bytes().split(b"\0")[0].decode()
                if not title.startswith(ACTOR_TITLE):
                    continue
                status = (proc / "status").read_text()
            except OSError:
                continue  # the process ended meanwhile
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    mb = int(line.split()[1]) / 1024
                    self.peak_mb[int(proc.name)] = max(mb, self.peak_mb.get(int(proc.name), 0))


@app.command()
def one(
    model: Path = typer.Option(...),
    documents: Path = typer.Option(...),
    records: Path = typer.Option(..., help="Where to write the records, to compare runs"),
    engine: str = typer.Option("process", help="process or ray"),
    actors: int = typer.Option(1),
    cpus: int = typer.Option(2, help="CPUs of the local Ray cluster"),
    batch_size: int = typer.Option(32),
) -> None:
    """One run, in this process; prints its figures as JSON."""
    import torch

    from spacy_secner.cli.annotate import Report, annotate_items
    from spacy_secner.cli.readers import read_inputs
    from spacy_secner.cli.writers import document_record

    report = Report()
    items = read_inputs([documents])
    figures: Dict[str, Any] = {"engine": engine, "batch_size": batch_size}
    out: Dict[str, Dict[str, Any]] = {}
    stamps: List[float] = []
    if engine == "process":
        import spacy

        figures["threads"] = torch.get_num_threads()
        start = time.perf_counter()
        nlp = spacy.load(model)
        figures["load_s"] = time.perf_counter() - start
        for doc_id, doc in annotate_items(
            nlp, items, report=report, batch_size=batch_size, n_process=1
        ):
            out[doc_id] = document_record(doc_id, doc)
            stamps.append(time.perf_counter())
        figures["peak_rss_mb"] = harness.peak_rss_mb()
    else:
        from spacy_secner import distributed

        figures["actors"] = actors
        figures["cpus"] = cpus
        start = time.perf_counter()
        with distributed.cluster(num_cpus=cpus):
            figures["cluster_s"] = time.perf_counter() - start
            start = time.perf_counter()
            with ActorMemory() as memory:
                results = distributed.annotate_items_on_ray(
                    items, str(model), report=report, actors=actors, batch_size=batch_size
                )
                for doc_id, record in results:
                    out[doc_id] = record
                    stamps.append(time.perf_counter())
        figures["actor_peak_rss_mb"] = sorted(round(mb) for mb in memory.peak_mb.values())
    figures["docs"] = report.annotated
    figures["failed"] = len(report.problems)
    figures["total_s"] = stamps[-1] - start
    figures["docs_per_s"] = len(stamps) / figures["total_s"]
    figures["first_record_s"] = stamps[0] - start
    records.write_text(json.dumps(out, sort_keys=True), encoding="utf8")
    print(json.dumps(figures))


@app.command()
def run(
    config: Path = typer.Option(Path("configs/minilm_cpu.cfg"), help="Pipeline config"),
    dnrti_dir: Optional[str] = typer.Option(None, help="Default: $DNRTI_DIR, else the asset"),
    docs: int = typer.Option(200, help="Documents made of the test sentences"),
    batch_size: int = typer.Option(32, help="Documents per batch (nlp.pipe and actor calls)"),
    cpus: int = typer.Option(2, help="CPUs of the local Ray cluster"),
    output: Optional[Path] = typer.Option(None, help="Write the figures here as JSON"),
) -> None:
    """Every run (in process with default and one thread, Ray with 1 and 2 actors)."""
    from spacy_secner import data

    source = data.dnrti_dir(dnrti_dir)
    sentences = harness.read_test_sentences(source / "test.txt")
    texts = harness.make_documents(sentences, docs)
    runs: List[Dict[str, Any]] = []
    # The 1-minute load average before and after: other jobs share the machine.
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build_pipeline(config, source / "train.txt", work / "model")
        documents = work / "documents.jsonl"
        documents.write_text(
            "".join(json.dumps({"id": f"doc-{i}", "text": t}) + "\n" for i, t in enumerate(texts)),
            encoding="utf8",
        )
        settings = [
            ("process", 1, {}),
            ("process", 1, {"OMP_NUM_THREADS": "1"}),
            ("ray", 1, {}),
            ("ray", 2, {}),
        ]
        reference = None
        for i, (engine, actors, env) in enumerate(settings):
            records = work / f"records-{i}.json"
            command = [
                sys.executable,
                __file__,
                "one",
                "--model",
                str(work / "model"),
                "--documents",
                str(documents),
                "--records",
                str(records),
                "--engine",
                engine,
                "--actors",
                str(actors),
                "--cpus",
                str(cpus),
                "--batch-size",
                str(batch_size),
            ]
            proc = subprocess.run(
                command, env={**os.environ, **env}, capture_output=True, text=True, check=False
            )
            if proc.returncode != 0:
                sys.exit(f"{engine} run failed:\n{proc.stderr[-3000:]}")
            figures = json.loads(proc.stdout.strip().splitlines()[-1])
            runs.append(figures)
            typer.echo(json.dumps(figures), err=True)
            reference = reference or records.read_text(encoding="utf8")
            if records.read_text(encoding="utf8") != reference:
                sys.exit(f"run {i} ({engine}, {actors} actors) wrote other records than run 0")
    load.append(os.getloadavg()[0])
    result = {
        "config": str(config),
        "load_average": load,
        "docs": len(texts),
        "words": harness.count_words(texts),
        "machine": harness.machine_info(threads=cpus),
        "runs": runs,
    }
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf8")
    typer.echo(render(result))


def render(result: Dict[str, Any]) -> str:
    """The runs as a Markdown table."""
    before, after = result["load_average"]
    lines = [
        f"{result['docs']} documents, {result['words']} words, all records identical across runs; "
        f"load average {before:.1f} before, {after:.1f} after",
        "",
        "| engine | threads or actors | total s | docs/s | first record s | peak memory MiB |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in result["runs"]:
        if r["engine"] == "process":
            who = f"{r['threads']} thread{'s' if r['threads'] > 1 else ''}"
            memory = f"{r['peak_rss_mb']:.0f} (process)"
        else:
            who = f"{r['actors']} actor{'s' if r['actors'] > 1 else ''}"
            # The largest: a short-lived child that an actor forks shows the actor's title too.
            peaks = r["actor_peak_rss_mb"]
            memory = f"{max(peaks)} per actor" if peaks else "-"
        lines.append(
            f"| {r['engine']} | {who} | {r['total_s']:.1f} | {r['docs_per_s']:.2f} | "
            f"{r['first_record_s']:.1f} | {memory} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    app()
