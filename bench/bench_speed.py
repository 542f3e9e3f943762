"""Throughput and memory of the pipeline beside the same encoder used directly (Hugging Face token
classification, and the bare encoder forward pass), on DNRTI's test set as sentences and as
multi-sentence documents. See bench/harness/ for what each system does.

    python bench/bench_speed.py run --model en_secner --output metrics/bench_speed.json
    python bench/bench_speed.py profile --model en_secner --texts documents --batch-size 64
    python bench/bench_speed.py grouping --model en_secner --settings 4096:512,512:0
    python bench/bench_speed.py tiny --output metrics/bench_tiny.json
    python bench/bench_speed.py primitive-cache --output metrics/bench_primitive_cache.json
"""

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Dict, List, Optional

import typer

import harness
from spacy_secner import data
from spacy_secner.encoders import embedded_encoder

app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)


def _write_json(path: Path, payload: Dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2), encoding="utf8")


def _texts(dnrti_dir: str, limit: int, docs: int, sets: List[str]) -> Dict[str, List[str]]:
    """The chosen text sets: test sentences as raw text, and documents made of them."""
    source = data.dnrti_dir(dnrti_dir)
    test = source / "test.txt"
    if not test.is_file():
        raise typer.BadParameter(f"{test} not found: set DNRTI_DIR or pass --dnrti-dir")
    sentences = harness.read_test_sentences(test, limit=limit)
    available = {"sentences": sentences, "documents": harness.make_documents(sentences, docs)}
    unknown = set(sets) - set(available)
    if unknown:
        raise typer.BadParameter(f"unknown text sets {sorted(unknown)}; use sentences,documents")
    return {name: available[name] for name in sets}


def _describe_texts(text_sets: Dict[str, List[str]], n_sentences: int) -> Dict[str, Dict]:
    """Texts and words per text set, and sentences per document."""
    described = {}
    for name, t in text_sets.items():
        described[name] = {"texts": len(t), "words": harness.count_words(t)}
        if name == "documents":
            described[name]["sentences_per_doc"] = n_sentences / max(len(t), 1)
    return described


def _split(value: str) -> List[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


@app.command()
def run(
    model: str = typer.Option("en_secner", help="Pipeline package name or directory"),
    output: Path = typer.Option(Path("metrics/bench_speed.json"), help="JSON report"),
    dnrti_dir: str = typer.Option(
        "", help="DNRTI directory (empty: $DNRTI_DIR, else assets/dnrti)"
    ),
    encoder: str = typer.Option("", help="HF encoder directory (empty: the embedded MiniLM)"),
    batch_sizes: str = typer.Option("1,8,64", help="Comma-separated batch sizes"),
    repeats: int = typer.Option(5, min=1, help="Timed runs per system after one warm-up"),
    threads: int = typer.Option(
        os.cpu_count() or 1, min=1, help="torch/OpenMP threads, all systems"
    ),
    texts: str = typer.Option("sentences,documents", help="Text sets to time"),
    systems: str = typer.Option("pipeline,hf,floor", help="Systems to time"),
    limit: int = typer.Option(0, min=0, help="Use the first N test sentences (0: all)"),
    docs: int = typer.Option(50, min=1, help="Number of multi-sentence documents"),
    load_runs: int = typer.Option(3, min=0, help="Fresh processes timing spacy.load (0: skip)"),
    curves: Path = typer.Option(Path("training/curves.jsonl"), help="Training curves, for words/s"),
    spacy_benchmark: bool = typer.Option(False, help="Also run `spacy benchmark speed`"),
    corpus: Path = typer.Option(
        Path("corpus/test.spacy"), help="DocBin for `spacy benchmark speed`"
    ),
    spacy_benchmark_batches: int = typer.Option(30, min=30, help="--batches of `spacy benchmark`"),
    gpu_id: int = typer.Option(-1, help="GPU for every system (-1: CPU)"),
    load_python: List[str] = typer.Option(
        [], help="Also time spacy.load with this interpreter (e.g. .venv-runtime/bin/python)"
    ),
    interleave: bool = typer.Option(
        False, help="Systems take turns at every batch (a shared machine's load changes fast)"
    ),
    turn_texts: int = typer.Option(
        0, min=0, help="With --interleave: whole batches of about this many texts a turn (0: one batch)"
    ),
) -> None:
    """Time the pipeline, HF token classification and the bare encoder; write JSON and Markdown."""
    missing = [p for p in load_python if not Path(p).is_file()]
    if missing:
        raise typer.BadParameter(
            f"--load-python {missing[0]} does not exist; build it with `make runtime-venv`"
        )
    text_sets = _texts(dnrti_dir, limit, docs, _split(texts))
    n_sentences = len(_texts(dnrti_dir, limit, docs, ["sentences"])["sentences"])
    sizes = [int(size) for size in _split(batch_sizes)]
    chosen = _split(systems)
    if set(chosen) - set(harness.SYSTEMS):
        raise typer.BadParameter(f"systems must be among {harness.SYSTEMS}")
    encoder = encoder or embedded_encoder()
    report = {
        "command": shlex.join(["python", *sys.argv]),
        "machine": harness.machine_info(threads, gpu_id=gpu_id),
        "settings": {
            "model": model,
            "encoder": encoder,
            "repeats": repeats,
            "batch_sizes": sizes,
            "max_length": 512,
            "interleave": interleave,
            "turn_texts": turn_texts if interleave else None,
            "num_labels": 27,
            "gpu_id": gpu_id,
            "texts": _describe_texts(text_sets, n_sentences),
        },
    }
    if load_runs and "pipeline" in chosen:
        typer.echo(f"timing spacy.load({model!r}) in {load_runs} fresh processes ...", err=True)
        report["spacy_load"] = harness.measure_load(
            model, runs=load_runs, threads=threads, gpu_id=gpu_id
        )
        report["spacy_load_other"] = [
            harness.measure_load(model, runs=load_runs, threads=threads, gpu_id=gpu_id, python=p)
            for p in load_python
        ]
    report.update(
        harness.run_benchmark(
            model=model,
            encoder=encoder,
            texts=text_sets,
            batch_sizes=sizes,
            repeats=repeats,
            threads=threads,
            systems=chosen,
            gpu_id=gpu_id,
            interleave=interleave,
            turn_texts=turn_texts,
            log=lambda line: typer.echo(line, err=True),
        )
    )
    report["training"] = harness.training_speed(curves)
    if spacy_benchmark:
        command = harness.spacy_benchmark_command(
            model, corpus, batch_size=max(sizes), n_batches=spacy_benchmark_batches, gpu_id=gpu_id
        )
        typer.echo(f"running {' '.join(command)} ...", err=True)
        report["spacy_benchmark"] = harness.run_spacy_benchmark(command, threads=threads)
    report["machine"]["load_average_end"] = list(os.getloadavg())
    report["targets"] = harness.check_targets(report)
    _write_json(output, report)
    typer.echo(harness.render_markdown(report))
    typer.echo(f"Wrote {output}", err=True)


@app.command()
def tiny(
    output: Path = typer.Option(Path("metrics/bench_tiny.json"), help="JSON report"),
    dnrti_dir: str = typer.Option(
        "", help="DNRTI directory (empty: $DNRTI_DIR, else assets/dnrti)"
    ),
    config: Path = typer.Option(Path("configs/minilm_cpu.cfg"), help="The pipeline's config"),
    workdir: Optional[Path] = typer.Option(
        None, help="Where to build the tiny encoder and pipeline (default: a temporary directory)"
    ),
    batch_sizes: str = typer.Option("64", help="Comma-separated batch sizes"),
    repeats: int = typer.Option(7, min=1, help="Timed runs per system after one warm-up"),
    threads: int = typer.Option(1, min=1, help="torch/OpenMP threads, all systems"),
    texts: str = typer.Option("sentences,documents", help="Text sets to time"),
    limit: int = typer.Option(0, min=0, help="Use the first N test sentences (0: all)"),
    docs: int = typer.Option(50, min=1, help="Number of multi-sentence documents"),
    gpu_id: int = typer.Option(-1, help="GPU for every system (-1: CPU)"),
    interleave: bool = typer.Option(
        True, help="Systems take turns at every batch (a shared machine's load changes fast)"
    ),
) -> None:
    """The pipeline's own overhead: the shipped config on a tiny random encoder, beside the same
    model in plain PyTorch and an HF token classifier on that encoder."""
    import tempfile

    from harness.tiny import make_tiny_encoder, make_tiny_pipeline

    text_sets = _texts(dnrti_dir, limit, docs, _split(texts))
    n_sentences = len(_texts(dnrti_dir, limit, docs, ["sentences"])["sentences"])
    sizes = [int(size) for size in _split(batch_sizes)]
    with tempfile.TemporaryDirectory(prefix="secner-tiny-") as tmp:
        root = workdir or Path(tmp)
        encoder = make_tiny_encoder(root / "encoder")
        sample = next(iter(text_sets.values()))[:16]
        model = make_tiny_pipeline(config, encoder, root / "pipeline", sample, data.DNRTI_LABELS)
        report = {
            "command": shlex.join(["python", *sys.argv]),
            "machine": harness.machine_info(threads, gpu_id=gpu_id),
            "settings": {
                "model": f"{config} with a random encoder {harness.TINY_ENCODER_SHAPE}",
                "encoder": "tiny random BERT, the embedded MiniLM's tokenizer",
                "repeats": repeats,
                "batch_sizes": sizes,
                "max_length": 512,
                "interleave": interleave,
                "num_labels": 2 * len(data.DNRTI_LABELS) + 1,
                "gpu_id": gpu_id,
                "texts": _describe_texts(text_sets, n_sentences),
            },
        }
        report.update(
            harness.run_benchmark(
                model=str(model),
                encoder=str(encoder),
                texts=text_sets,
                batch_sizes=sizes,
                repeats=repeats,
                threads=threads,
                systems=harness.TINY_SYSTEMS,
                num_labels=report["settings"]["num_labels"],
                gpu_id=gpu_id,
                interleave=interleave,
                log=lambda line: typer.echo(line, err=True),
            )
        )
    report["machine"]["load_average_end"] = list(os.getloadavg())
    report["targets"] = harness.check_targets(report)
    _write_json(output, report)
    typer.echo(harness.render_markdown(report))
    typer.echo(f"Wrote {output}", err=True)


@app.command()
def profile(
    model: str = typer.Option("en_secner", help="Pipeline package name or directory"),
    dnrti_dir: str = typer.Option(
        "", help="DNRTI directory (empty: $DNRTI_DIR, else assets/dnrti)"
    ),
    texts: str = typer.Option("documents", help="sentences or documents"),
    batch_size: int = typer.Option(64, min=1),
    threads: int = typer.Option(os.cpu_count() or 1, min=1, help="torch threads"),
    limit: int = typer.Option(0, min=0, help="Use the first N test sentences (0: all)"),
    docs: int = typer.Option(50, min=1, help="Number of multi-sentence documents"),
    tree: Optional[Path] = typer.Option(None, help="Also write pyinstrument's call tree here"),
) -> None:
    """Where one `nlp.pipe` pass spends its time (pyinstrument; `pip install pyinstrument`)."""
    import spacy
    import torch

    torch.set_num_threads(threads)
    chosen = _texts(dnrti_dir, limit, docs, [texts])[texts]
    nlp = spacy.load(model)
    result = harness.profile_pipeline(nlp, chosen, batch_size=batch_size)
    words = harness.count_words(chosen)
    typer.echo(
        f"{model} on {len(chosen)} {texts} ({words:,} words), batch {batch_size}, {threads} "
        f"threads: {result['seconds']:.2f} s profiled ({words / result['seconds']:,.0f} words/s "
        "under the profiler)"
    )
    typer.echo("| part | seconds | share |\n|---|---:|---:|")
    for part, seconds in result["parts"].items():
        typer.echo(f"| {part} | {seconds:.2f} | {100 * seconds / result['seconds']:.1f}% |")
    if tree:
        tree.parent.mkdir(parents=True, exist_ok=True)
        tree.write_text(result["text"], encoding="utf8")


@app.command()
def grouping(
    model: str = typer.Option("en_secner", help="Pipeline package name or directory"),
    settings: str = typer.Option(
        "4096:512,4096:512:0,512:0:0,4096:0,8192:512,4096:256,4096:1024,4096:512:64,4096:512:256",
        help="max_batch_items:max_batch_wordpieces[:packed_row_wordpieces]"
        "[:frozen|eager|transposed][:even|fullrows] items (rows of packed windows, 0 for "
        "padded groups; the encoder's frozen graph, its eager forward, or the graph's "
        "optimize_for_inference twin with transposed weights; rows evened out in length or "
        "filled to their full length; left out: the pipeline's own); ratios are to the first",
    ),
    dnrti_dir: str = typer.Option(
        "", help="DNRTI directory (empty: $DNRTI_DIR, else assets/dnrti)"
    ),
    texts: str = typer.Option("sentences,documents", help="Text sets to time"),
    batch_size: int = typer.Option(64, min=1),
    repeats: int = typer.Option(5, min=1, help="Timed passes per setting after one warm-up"),
    threads: int = typer.Option(os.cpu_count() or 1, min=1, help="torch threads"),
    gpu_id: int = typer.Option(-1, help="GPU to run on (-1: CPU)"),
    limit: int = typer.Option(0, min=0, help="Use the first N test sentences (0: all)"),
    docs: int = typer.Option(50, min=1, help="Number of multi-sentence documents"),
    output: Optional[Path] = typer.Option(None, help="Also write the rows as JSON here"),
) -> None:
    """Words/s of one loaded pipeline under several transformer settings (batching, packing,
    and the encoder's frozen graph or eager forward pass)."""
    import spacy
    import torch

    torch.set_num_threads(threads)
    try:
        chosen = harness.parse_settings(settings)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    sync = torch.cuda.synchronize if gpu_id >= 0 else (lambda: None)
    if gpu_id >= 0:
        spacy.require_gpu(gpu_id)
    nlp = spacy.load(model)
    text_sets = _texts(dnrti_dir, limit, docs, _split(texts))
    rows = harness.time_settings(
        nlp, text_sets, chosen, batch_size=batch_size, repeats=repeats, sync=sync
    )
    device = torch.cuda.get_device_name(gpu_id) if gpu_id >= 0 else f"CPU, {threads} threads"
    typer.echo(
        f"`{model}`, batch {batch_size}, {device}; median of {repeats} after a warm-up, "
        f"settings interleaved; command: `{shlex.join(['python', *sys.argv])}`\n"
    )
    typer.echo(harness.render_settings(rows))
    if output:
        _write_json(output, {"device": device, "rows": rows})


@app.command()
def decoding(
    model: str = typer.Option("en_secner", help="Pipeline package name or directory"),
    dnrti_dir: str = typer.Option(
        "", help="DNRTI directory (empty: $DNRTI_DIR, else assets/dnrti)"
    ),
    texts: str = typer.Option("sentences,documents", help="Text sets to time"),
    batch_sizes: str = typer.Option("1,8,64", help="Comma-separated batch sizes"),
    repeats: int = typer.Option(5, min=1, help="Timed passes per setting after one warm-up"),
    threads: int = typer.Option(os.cpu_count() or 1, min=1, help="torch threads"),
    limit: int = typer.Option(0, min=0, help="Use the first N test sentences (0: all)"),
    docs: int = typer.Option(50, min=1, help="Number of multi-sentence documents"),
    output: Optional[Path] = typer.Option(None, help="Also write the rows as JSON here"),
) -> None:
    """`ner_crf` on the CPU with the CRF decoder's passes in numpy and in torch, side by side."""
    import spacy
    import torch

    torch.set_num_threads(threads)
    nlp = spacy.load(model)
    text_sets = _texts(dnrti_dir, limit, docs, _split(texts))
    sizes = [int(size) for size in _split(batch_sizes)]
    rows = harness.time_decoding(nlp, text_sets, batch_sizes=sizes, repeats=repeats)
    typer.echo(
        f"`{model}`, CPU, {threads} threads; median of {repeats} after a warm-up, settings "
        f"interleaved; command: `{shlex.join(['python', *sys.argv])}`\n"
    )
    typer.echo(harness.render_decoding(rows))
    if output:
        _write_json(output, {"machine": harness.machine_info(threads), "rows": rows})


@app.command("primitive-cache")
def primitive_cache(
    shapes: int = typer.Option(300, min=1, help="Sequence lengths to read, 1 to this"),
    capacities: str = typer.Option(
        "package,1024",
        help="oneDNN cache capacities, each in a fresh process: numbers, or 'package' for what "
        "importing spacy_secner sets (1024 is oneDNN's default)",
    ),
    threads: int = typer.Option(os.cpu_count() or 1, min=1, help="torch threads"),
    output: Optional[Path] = typer.Option(None, help="Also write the rows as JSON here"),
) -> None:
    """Memory and time of the pipeline's BiLSTM over many input lengths, by the capacity of
    oneDNN's primitive cache."""
    try:
        chosen = [None if c == "package" else int(c) for c in _split(capacities)]
    except ValueError:
        raise typer.BadParameter(f"{capacities!r}: want numbers or 'package'") from None
    rows = [harness.measure_capacity(capacity, shapes, threads) for capacity in chosen]
    typer.echo(
        f"BiLSTMEmitter (384 inputs, 256 units each way), one sequence per length 1-{shapes}, "
        f"two passes, {threads} threads, each capacity in a fresh process; command: "
        f"`{shlex.join(['python', *sys.argv])}`\n"
    )
    typer.echo(harness.render_capacities(rows))
    if output:
        _write_json(output, {"machine": harness.machine_info(threads), "rows": rows})


if __name__ == "__main__":
    app()
