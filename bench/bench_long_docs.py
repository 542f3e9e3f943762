"""Time and peak memory of annotating one long report, by report size, each run in a fresh
process: `pipe_in_pieces` (what `secner annotate` runs), plain `nlp.pipe` on the whole doc, and
the `secner annotate` command itself.

    python bench/bench_long_docs.py build --output metrics/long_docs/model
    python bench/bench_long_docs.py run --model metrics/long_docs/model \
        --sizes 10,100,1000 --output metrics/long_docs/long_docs.json
    python bench/bench_long_docs.py accuracy --model training/model-best \
        --max-piece-tokens 2048,256,64 --output metrics/long_docs/accuracy.json

Speed and memory do not depend on what the model learned, so `build` initializes
`configs/minilm_cpu.cfg` on a few DNRTI training sentences, without training, and saves it.
The reports are DNRTI test sentences as raw text, joined with spaces into one line and cut at
a sentence to at most SIZE x 1,000 characters (DNRTI's sentences are shuffled: only the length
is realistic). `accuracy` scores a trained pipeline on DNRTI's test set joined into one document,
annotated whole and in pieces of several sizes.
"""

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import typer

import harness
from spacy_secner import data

app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)

MODES = ("pieces", "whole", "cli")


def _split(value: str) -> List[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def make_report(dnrti_dir: str, size_kb: int) -> str:
    """DNRTI test sentences joined into one line of at most `size_kb` x 1,000 characters."""
    test = data.dnrti_dir(dnrti_dir or None) / "test.txt"
    if not test.is_file():
        raise typer.BadParameter(f"{test} not found: set DNRTI_DIR or pass --dnrti-dir")
    sentences = harness.read_test_sentences(test)
    limit = size_kb * 1000
    parts: List[str] = []
    length = -1
    while True:
        for sentence in sentences:
            if length + 1 + len(sentence) > limit:
                return " ".join(parts)
            parts.append(sentence)
            length += 1 + len(sentence)


@app.command()
def build(
    output: Path = typer.Option(..., help="Directory to save the pipeline to"),
    config: Path = typer.Option(Path("configs/minilm_cpu.cfg"), help="Pipeline config"),
    dnrti_dir: str = typer.Option("", help="DNRTI directory (empty: $DNRTI_DIR)"),
    sentences: int = typer.Option(20, min=1, help="Training sentences to initialize on"),
) -> None:
    """Initialize the pipeline of `config` on a few DNRTI sentences (no training) and save it."""
    import spacy
    from spacy.tokens import Doc
    from spacy.training import Example

    nlp = spacy.util.load_model_from_config(spacy.util.load_config(config), auto_fill=True)
    train = data.dnrti_dir(dnrti_dir or None) / "train.txt"
    gold, _ = data.read_docs(train, nlp.vocab, limit=sentences)
    examples = [Example(Doc(nlp.vocab, words=[t.text for t in d]), d) for d in gold]
    nlp.initialize(lambda: examples)
    output.mkdir(parents=True, exist_ok=True)
    nlp.to_disk(output)
    typer.echo(f"saved {nlp.pipe_names} to {output}")


@app.command()
def measure(
    model: Path = typer.Option(..., help="Pipeline directory"),
    size_kb: int = typer.Option(..., help="Report size in thousands of characters"),
    mode: str = typer.Option("pieces", help="pieces (pipe_in_pieces) or whole (nlp.pipe)"),
    dnrti_dir: str = typer.Option("", help="DNRTI directory (empty: $DNRTI_DIR)"),
    batch_size: int = typer.Option(32, help="Batch size (secner annotate's default)"),
) -> None:
    """One run in this process; prints a JSON line. Run it in a fresh process per size."""
    import spacy

    from spacy_secner.long_docs import pipe_in_pieces

    text = make_report(dnrti_dir, size_kb)
    nlp = spacy.load(model)
    rss_loaded = harness.rss_mb()
    cpu = os.times()
    start = time.perf_counter()
    if mode == "pieces":
        (doc,) = pipe_in_pieces(nlp, [text], batch_size=batch_size)
    elif mode == "whole":
        (doc,) = nlp.pipe([text], batch_size=batch_size)
    else:
        raise typer.BadParameter(f"unknown mode {mode!r}; use pieces or whole")
    seconds = time.perf_counter() - start
    cpu_seconds = sum(os.times()[:2]) - sum(cpu[:2])
    assert doc.text == text
    result = {
        "mode": mode,
        "size_kb": size_kb,
        "chars": len(text),
        "words": len(text.split()),
        "tokens": len(doc),
        "entities": len(doc.ents),
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "rss_after_load_mb": round(rss_loaded, 1),
        "peak_rss_mb": round(harness.peak_rss_mb(), 1),
    }
    print(json.dumps(result))


@app.command()
def accuracy(
    model: Path = typer.Option(..., help="A trained pipeline"),
    max_piece_tokens: str = typer.Option("2048,256,64", help="Piece sizes to score"),
    dnrti_dir: str = typer.Option("", help="DNRTI directory (empty: $DNRTI_DIR)"),
    output: Path = typer.Option(Path("metrics/long_docs/accuracy.json"), help="JSON report"),
) -> None:
    """Entity P/R/F1 on DNRTI's test set as one raw-text document (exact character spans and
    label), annotated whole with `nlp.pipe` and with `pipe_in_pieces` at each piece size."""
    import spacy

    from spacy_secner.bio import entity_bounds
    from spacy_secner.detokenize import join_tokens, token_offsets
    from spacy_secner.long_docs import pipe_in_pieces

    test = data.dnrti_dir(dnrti_dir or None) / "test.txt"
    parts, gold, shift = [], set(), 0
    for words, tags in data.read_sentences(test):
        text, spaces = join_tokens(words)
        offsets = token_offsets(words, spaces)
        for start, end in entity_bounds(tags):
            gold.add((offsets[start][0] + shift, offsets[end - 1][1] + shift, tags[start][2:]))
        parts.append(text)
        shift += len(text) + 1
    text = " ".join(parts)
    nlp = spacy.load(model)
    runs = {"whole": lambda: next(iter(nlp.pipe([text])))}
    for size in [int(s) for s in _split(max_piece_tokens)]:
        runs[f"pieces {size}"] = lambda size=size: next(
            iter(pipe_in_pieces(nlp, [text], max_piece_tokens=size))
        )
    rows = []
    for name, annotate in runs.items():
        found = {(e.start_char, e.end_char, e.label_) for e in annotate().ents}
        tp = len(found & gold)
        p, r = tp / max(len(found), 1), tp / max(len(gold), 1)
        f1 = 2 * p * r / max(p + r, 1e-12)
        rows.append({"run": name, "precision": p, "recall": r, "f1": f1, "predicted": len(found)})
        typer.echo(json.dumps(rows[-1]), err=True)
    report = {"command": shlex.join([Path(sys.executable).name, *sys.argv]), "model": str(model)}
    report.update({"gold": len(gold), "chars": len(text), "rows": rows})
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    typer.echo("| run | P | R | F1 | entities |\n|---|---:|---:|---:|---:|")
    for row in rows:
        typer.echo(
            f"| {row['run']} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} | "
            f"{row['predicted']:,} |"
        )


def _run_child(args: List[str], env: Dict[str, str]) -> Dict[str, Any]:
    """Run a command; RETURNS its stdout, wall time and peak RSS in MiB (its own, from wait4)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(args, stdout=out, stderr=err, env=env, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"{shlex.join(args)} failed:\n{err.read()[-3000:]}")
        return {
            "stdout": out.read(),
            "seconds": seconds,
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": usage.ru_maxrss / 1024,
        }


@app.command()
def run(
    model: Path = typer.Option(..., help="Pipeline directory (from `build`)"),
    sizes: str = typer.Option("10,100,1000", help="Report sizes in thousands of characters"),
    modes: str = typer.Option("pieces,whole,cli", help="Modes to run: pieces, whole, cli"),
    dnrti_dir: str = typer.Option("", help="DNRTI directory (empty: $DNRTI_DIR)"),
    output: Path = typer.Option(Path("metrics/long_docs/long_docs.json"), help="JSON report"),
    threads: int = typer.Option(os.cpu_count() or 1, min=1, help="torch/OpenMP threads"),
) -> None:
    """Every size in every mode, each in a fresh process; a JSON report and a Markdown table."""
    env = harness.thread_env(threads)
    script = str(Path(__file__).resolve())
    rows = []
    for mode in _split(modes):
        if mode not in MODES:
            raise typer.BadParameter(f"unknown mode {mode!r}; use {', '.join(MODES)}")
        for size in [int(s) for s in _split(sizes)]:
            if mode == "cli":
                rows.append(_run_cli(model, size, dnrti_dir, env))
            else:
                args = [sys.executable, script, "measure", "--model", str(model)]
                args += ["--size-kb", str(size), "--mode", mode, "--dnrti-dir", dnrti_dir]
                child = _run_child(args, env)
                rows.append(json.loads(child["stdout"].strip().splitlines()[-1]))
            typer.echo(json.dumps(rows[-1]), err=True)
    report = {"command": shlex.join([Path(sys.executable).name, *sys.argv]), "rows": rows}
    report["machine"] = harness.machine_info(threads)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    typer.echo(render(rows))


def _run_cli(model: Path, size: int, dnrti_dir: str, env: Dict[str, str]) -> Dict[str, Any]:
    """`secner annotate REPORT -o OUT.jsonl` with its defaults, in a process of its own."""
    text = make_report(dnrti_dir, size)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.txt"
        report.write_text(text, encoding="utf8")
        out = Path(tmp) / "out.jsonl"
        args = [sys.executable, "-m", "spacy_secner.cli", "annotate", str(report)]
        args += ["-o", str(out), "--model", str(model), "--quiet"]
        child = _run_child(args, env)
        (record,) = [json.loads(line) for line in out.read_text(encoding="utf8").splitlines()]
    return {
        "mode": "cli",
        "size_kb": size,
        "chars": len(text),
        "words": len(text.split()),
        "entities": len(record["entities"]),
        # Wall time of the whole command: starting Python and loading the pipeline included.
        "seconds": round(child["seconds"], 2),
        "cpu_seconds": round(child["cpu_seconds"], 2),
        "peak_rss_mb": round(child["peak_rss_mb"], 1),
    }


def render(rows: List[Dict[str, Any]]) -> str:
    """The rows as a Markdown table. Words per CPU second are steadier than words per second
    on a shared machine; for `cli` both count the whole command, start and load included."""
    lines = [
        "| mode | size | words | seconds | CPU seconds | words / CPU s | peak RSS (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        cpu = row.get("cpu_seconds")
        rate = f"{row['words'] / cpu:,.0f}" if cpu else "n/a"
        lines.append(
            f"| {row['mode']} | {row['chars'] / 1000:,.0f} KB | {row['words']:,} | "
            f"{row['seconds']:.1f} | {'n/a' if cpu is None else f'{cpu:.1f}'} | {rate} | "
            f"{row['peak_rss_mb']:,.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    app()
