"""`secner annotate`: the entities (and indicators of compromise) a trained pipeline finds in
text, PDF and HTML files, directories, JSONL or stdin, written as JSONL, CSV, a displaCy HTML
report or STIX 2.1 bundles."""

import codecs
import importlib.util
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Deque, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import spacy
import typer
from spacy.language import Language
from spacy.tokens import Doc
from tqdm import tqdm

from ..atomic import atomic_output
from ..documents import mark_blocks
from .readers import (
    DEFAULT_GLOBS,
    STDIN,
    Document,
    Failure,
    Item,
    find_files,
    is_jsonl,
    read_inputs,
)
from .writers import IOCS_KEY, WRITERS, WriteError, write_failures


class OutputFormat(str, Enum):
    jsonl = "jsonl"
    csv = "csv"
    html = "html"
    stix = "stix"


class InputFormat(str, Enum):
    auto = "auto"
    text = "text"
    jsonl = "jsonl"
    pdf = "pdf"
    html = "html"


class EncodingErrors(str, Enum):
    strict = "strict"
    replace = "replace"


@dataclass
class Report:
    """What happened to the documents of a run."""

    read: int = 0
    annotated: int = 0
    problems: List[Failure] = field(default_factory=list)
    entities: Counter = field(default_factory=Counter)
    iocs: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def failed(self) -> List[Failure]:
        return [p for p in self.problems if not p.skipped]

    @property
    def skipped(self) -> List[Failure]:
        return [p for p in self.problems if p.skipped]

    @property
    def done(self) -> int:
        return self.annotated + len(self.problems)

    def summary(self, *, limit: int = 20) -> str:
        rate = self.annotated / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"secner annotate: {self.read} documents read, {self.annotated} annotated, "
            f"{len(self.skipped)} skipped, {len(self.failed)} failed in {self.seconds:.1f} s "
            f"({rate:.1f} docs/s)"
        ]
        lines += problem_lines(self.problems, limit=limit)
        ents = ", ".join(f"{label} {n}" for label, n in self.entities.most_common())
        lines.append(f"entities: {sum(self.entities.values())}" + (f" ({ents})" if ents else ""))
        if self.iocs:
            iocs = ", ".join(f"{label} {n}" for label, n in self.iocs.most_common())
            lines.append(f"indicators: {sum(self.iocs.values())} ({iocs})")
        return "\n".join(lines)


class InputError(RuntimeError):
    """The inputs could not be read on: unlike a pipeline error, no retry can help."""


def problem_lines(problems: List[Failure], *, limit: int) -> List[str]:
    lines = [
        f"  {'skipped' if p.skipped else 'failed'}: {p.id}: {p.reason}" for p in problems[:limit]
    ]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more (--errors FILE lists them all)")
    return lines


def make_input(nlp: Language, document: Document) -> Union[str, Doc]:
    """What the pipeline reads for a document: its text, or for one that knows where it came
    from a doc that carries it in `doc.user_data` ("source", and "page_starts" for a PDF), with
    a sentence starting at each block of a PDF or HTML page."""
    if document.source is None and not document.page_starts and not document.block_starts:
        return document.text
    doc = mark_blocks(nlp.make_doc(document.text), document.block_starts)
    if document.source is not None:
        doc.user_data["source"] = document.source
    if document.page_starts:
        doc.user_data["page_starts"] = list(document.page_starts)
    return doc


def annotate_items(
    nlp: Language, items: Iterable[Item], *, report: Report, batch_size: int, n_process: int
) -> Iterator[Tuple[str, Doc]]:
    """Run the pipeline over the documents among `items`, in order.

    Failures and empty documents go to `report` instead. When the pipeline raises, the
    documents it had taken but not returned are retried one at a time, so only the one that
    raises fails, and the run goes on. An error from `items` itself (InputError) ends the run.

    YIELDS (Tuple[str, Doc]): The id and the annotated doc of each document.
    """
    source = iter(items)
    pending: Deque[Document] = deque()

    def feed() -> Iterator[Tuple[Union[str, Doc], str]]:
        while True:
            try:
                item = next(source)
            except StopIteration:
                return
            except Exception as err:
                raise InputError(f"reading the inputs failed: {err}") from err
            report.read += 1
            if isinstance(item, Failure):
                report.problems.append(item)
            elif not item.text.strip():
                report.problems.append(Failure(item.id, "empty", skipped=True))
            else:
                pending.append(item)
                yield make_input(nlp, item), item.id

    while True:
        try:
            for doc, doc_id in nlp.pipe(
                feed(), as_tuples=True, batch_size=batch_size, n_process=n_process
            ):
                pending.popleft()
                report.annotated += 1
                yield doc_id, doc
            return
        except InputError:
            raise
        except Exception:
            if not pending:
                raise  # not a document's fault: the pipeline cannot run at all
        while pending:
            document = pending.popleft()
            try:
                doc = nlp(make_input(nlp, document))
            except Exception as err:
                reason = f"pipeline error: {type(err).__name__}: {err}"
                report.problems.append(Failure(document.id, reason))
                continue
            report.annotated += 1
            yield document.id, doc


def annotate(
    inputs: List[Path] = typer.Argument(
        ...,
        help="Text, PDF or HTML files, directories (searched with --glob), JSONL files, or - "
        "for stdin",
        show_default=False,
    ),
    output: Optional[Path] = typer.Option(
        None,
        "--output",
        "-o",
        dir_okay=False,
        help="Where to write, replaced only when the run completes. Default: stdout",
        show_default=False,
    ),
    output_format: Optional[OutputFormat] = typer.Option(
        None,
        "--format",
        "-f",
        help="Output format. Default: from the --output suffix (.csv, .html), else jsonl",
        show_default=False,
    ),
    model: str = typer.Option(
        "en_secner", "--model", "-m", help="Pipeline package name or directory"
    ),
    glob: Optional[List[str]] = typer.Option(
        None,
        help="Files to read under directories, recursively; repeat for several patterns. "
        "Default: *.txt, *.pdf, *.html, *.htm (auto); *.pdf (pdf); *.html, *.htm (html); "
        "*.txt (text, jsonl)",
        show_default=False,
    ),
    input_format: InputFormat = typer.Option(
        InputFormat.auto,
        help='text: a file is a document; jsonl: a line {"id", "text"} is; pdf, html: a file '
        "is a document, its text extracted; auto: jsonl for .jsonl/.ndjson, pdf and html by "
        "suffix or first bytes, else text",
    ),
    encoding: str = typer.Option("utf-8", help="Encoding of the input files"),
    encoding_errors: EncodingErrors = typer.Option(
        EncodingErrors.strict,
        help="strict: an undecodable document fails; replace: its bad bytes become U+FFFD",
    ),
    max_chars: int = typer.Option(1_000_000, min=1, help="Longer documents fail as too large"),
    batch_size: int = typer.Option(32, min=1, help="Documents per nlp.pipe batch"),
    n_process: int = typer.Option(1, min=1, help="Processes for nlp.pipe (CPU only)"),
    gpu_id: int = typer.Option(-1, help="GPU to run on, -1 for CPU"),
    errors: Optional[Path] = typer.Option(
        None,
        dir_okay=False,
        show_default=False,
        help="Write the failed and skipped documents here as JSONL",
    ),
    keep_text: bool = typer.Option(
        False,
        "--keep-text",
        help="JSONL: write each document's text (as extracted from a PDF or HTML page) into its "
        "record, so the offsets can be checked",
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="No progress bar or summary, only the failures"
    ),
    stix_per_run: bool = typer.Option(
        False,
        "--stix-per-run",
        help="--format stix: one bundle for the run, not one per document (a line each)",
    ),
    stix_indicators: bool = typer.Option(
        False,
        "--stix-indicators",
        help="--format stix: also an indicator for each observable, linked by based-on",
    ),
) -> None:
    """Find the entities in documents and write them with character offsets and confidence,
    and the indicators of compromise where the pipeline has `cti_iocs`.

    Exits with 1 if any document failed (undecodable, binary, too large, malformed JSONL line,
    a PDF that is encrypted, corrupt, truncated or scanned, an HTML page with no main text,
    pipeline error, STIX export error); the others are still annotated. Empty documents are
    skipped, not failed.
    """
    check_arguments(
        inputs, output=output, errors=errors, encoding=encoding, n_process=n_process, gpu_id=gpu_id
    )
    fmt = output_format or format_for(output)
    if keep_text and fmt != OutputFormat.jsonl:
        raise typer.BadParameter(
            f"--keep-text writes the text into JSONL records, not {fmt.value}",
            param_hint="--keep-text",
        )
    writer_options = check_format(fmt, per_run=stix_per_run, indicators=stix_indicators)
    if keep_text:
        writer_options["keep_text"] = True
    globs = glob or DEFAULT_GLOBS[input_format.value]
    paths = find_files(inputs, glob=globs)
    if not paths:
        shown = ", ".join(repr(g) for g in globs)
        typer.echo(f"secner annotate: no input files (none matched --glob {shown})", err=True)
    nlp = load_pipeline(model, gpu_id=gpu_id)
    items = read_inputs(
        paths,
        input_format=input_format.value,
        encoding=encoding,
        encoding_errors=encoding_errors.value,
        max_chars=max_chars,
    )
    # A text file is one document; a JSONL file holds an unknown number.
    total = None if any(is_jsonl(p, input_format.value) for p in paths) else len(paths)
    report = Report()
    start = time.perf_counter()
    try:
        with atomic_output(output) as out, tqdm(
            total=total,
            unit=" docs",
            file=sys.stderr,
            disable=quiet or not sys.stderr.isatty(),
        ) as bar:
            writer = WRITERS[fmt.value](out, **writer_options)
            docs = annotate_items(
                nlp, items, report=report, batch_size=batch_size, n_process=n_process
            )
            for doc_id, doc in docs:
                try:
                    writer.write(doc_id, doc)
                except WriteError as err:
                    # Annotated but not written: it fails like any other document.
                    report.annotated -= 1
                    report.problems.append(Failure(doc_id, str(err)))
                else:
                    report.entities.update(ent.label_ for ent in doc.ents)
                    if IOCS_KEY in doc.spans:
                        report.iocs.update(span.label_ for span in doc.spans[IOCS_KEY])
                bar.update(report.done - bar.n)
            writer.close()
            bar.update(report.done - bar.n)
    except KeyboardInterrupt:
        kept = "output on stdout is incomplete" if output is None else f"{output} not written"
        typer.echo(f"\nsecner annotate: interrupted, {kept}", err=True)
        raise typer.Exit(130) from None
    report.seconds = time.perf_counter() - start
    if errors is not None:
        write_failures(errors, report.problems)
    if quiet:
        for line in problem_lines(report.failed, limit=len(report.failed)):
            typer.echo(line, err=True)
    else:
        typer.echo(report.summary(), err=True)
    raise typer.Exit(1 if report.failed else 0)


def check_arguments(
    inputs: List[Path],
    *,
    output: Optional[Path],
    errors: Optional[Path],
    encoding: str,
    n_process: int,
    gpu_id: int,
) -> None:
    """Reject what cannot work before the pipeline loads (exit code 2)."""
    missing = [str(p) for p in inputs if p != STDIN and not p.exists()]
    if missing:
        raise typer.BadParameter(f"no such file or directory: {', '.join(missing)}")
    if inputs.count(STDIN) > 1:
        raise typer.BadParameter("stdin (-) can be read only once")
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise typer.BadParameter(f"unknown encoding: {encoding}", param_hint="--encoding") from None
    if n_process > 1 and gpu_id >= 0:
        raise typer.BadParameter("--n-process > 1 runs on CPU only", param_hint="--gpu-id")
    if output is not None and errors is not None and output.resolve() == errors.resolve():
        raise typer.BadParameter("--errors must not be the --output file", param_hint="--errors")


def check_format(fmt: OutputFormat, *, per_run: bool, indicators: bool) -> Dict[str, Any]:
    """The writer's options; rejects STIX options without the STIX format, and the STIX format
    without its extra (exit code 2)."""
    if fmt != OutputFormat.stix:
        if per_run or indicators:
            option = "--stix-per-run" if per_run else "--stix-indicators"
            raise typer.BadParameter(f"{option} needs --format stix", param_hint=option)
        return {}
    if importlib.util.find_spec("stix2") is None:
        raise typer.BadParameter(
            "the STIX format needs the stix extra: pip install 'spacy-secner[stix]'",
            param_hint="--format",
        )
    return {"per_run": per_run, "indicators": indicators}


def load_pipeline(model: str, *, gpu_id: int) -> Language:
    if gpu_id >= 0:
        try:
            spacy.require_gpu(gpu_id)
        except Exception as err:
            raise typer.BadParameter(
                f"GPU {gpu_id} is not usable: {err}", param_hint="--gpu-id"
            ) from err
    try:
        return spacy.load(model)
    except OSError as err:
        # spaCy's E050: neither an installed package nor a pipeline directory.
        raise typer.BadParameter(str(err), param_hint="--model") from err


def format_for(output: Optional[Path]) -> OutputFormat:
    suffix = output.suffix.lower() if output is not None else ""
    if suffix == ".csv":
        return OutputFormat.csv
    if suffix in (".html", ".htm"):
        return OutputFormat.html
    return OutputFormat.jsonl
