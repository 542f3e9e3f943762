"""`secner annotate`: the entities a trained pipeline finds in text files, directories, JSONL or
stdin, written as JSONL, CSV or a displaCy HTML report."""

import codecs
import os
import sys
import time
import traceback
from collections import Counter, deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Deque, Dict, Iterable, Iterator, List, Optional, Tuple

import click
import spacy
import typer
from spacy.language import Language
from spacy.tokens import Doc
from tqdm import tqdm

from ..atomic import atomic_output, leftover_temporaries
from ..long_docs import DEFAULT_MAX_PIECE_TOKENS, pipe_in_pieces
from .journal import Journal, JournalError, journal_path
from .readers import STDIN, Document, Failure, Item, find_files, is_jsonl, read_inputs
from .writers import WRITERS, document_record, write_failures


class OutputFormat(str, Enum):
    jsonl = "jsonl"
    csv = "csv"
    html = "html"


class InputFormat(str, Enum):
    auto = "auto"
    text = "text"
    jsonl = "jsonl"


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
    seconds: float = 0.0
    resumed: int = 0

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
        new = self.annotated - self.resumed
        rate = new / self.seconds if self.seconds > 0 else 0.0
        resumed = f" ({self.resumed} from the journal)" if self.resumed else ""
        lines = [
            f"secner annotate: {self.read} documents read, {self.annotated} annotated{resumed}, "
            f"{len(self.skipped)} skipped, {len(self.failed)} failed in {self.seconds:.1f} s "
            f"({rate:.1f} docs/s)"
        ]
        lines += problem_lines(self.problems, limit=limit)
        ents = ", ".join(f"{label} {n}" for label, n in self.entities.most_common())
        lines.append(f"entities: {sum(self.entities.values())}" + (f" ({ents})" if ents else ""))
        return "\n".join(lines)


class InputError(RuntimeError):
    """The inputs could not be read on: unlike a pipeline error, no retry can help."""


class CliError(Exception):
    """An error `secner annotate` reports in one line, with its exit code."""

    def __init__(self, message: str, *, code: int = 2, traceback_hint: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.traceback_hint = traceback_hint


def problem_lines(problems: List[Failure], *, limit: int) -> List[str]:
    lines = [
        f"  {'skipped' if p.skipped else 'failed'}: {p.id}: {p.reason}" for p in problems[:limit]
    ]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more (--errors FILE lists them all)")
    return lines


def one_line(err: BaseException, *, limit: int = 300) -> str:
    """An exception as one short line: its type and message, whitespace runs collapsed."""
    if isinstance(err, OSError) and err.strerror:
        message = err.strerror + (f": {err.filename}" if err.filename else "")
    else:
        message = str(err)
    text = " ".join(f"{type(err).__name__}: {message}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def annotate_items(
    nlp: Language,
    items: Iterable[Item],
    *,
    report: Report,
    batch_size: int,
    n_process: int,
    max_piece_tokens: int = DEFAULT_MAX_PIECE_TOKENS,
) -> Iterator[Tuple[str, Doc]]:
    """Run the pipeline over the documents among `items`, in order.

    Failures and empty documents go to `report` instead. When the pipeline raises, the
    documents it had taken but not returned are retried one at a time, so only the one that
    raises fails, and the run goes on. An error from `items` itself (InputError) ends the run.
    Documents longer than `max_piece_tokens` tokens are annotated in pieces of whole sentences
    (`pipe_in_pieces`), so memory does not grow with the longest document.

    YIELDS (Tuple[str, Doc]): The id and the annotated doc of each document.
    """
    source = iter(items)
    pending: Deque[Document] = deque()

    def feed() -> Iterator[Tuple[str, str]]:
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
                yield item.text, item.id

    while True:
        try:
            for doc, doc_id in pipe_in_pieces(
                nlp,
                feed(),
                as_tuples=True,
                batch_size=batch_size,
                n_process=n_process,
                max_piece_tokens=max_piece_tokens,
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
                (doc,) = pipe_in_pieces(
                    nlp, [document.text], batch_size=batch_size, max_piece_tokens=max_piece_tokens
                )
            except Exception as err:
                reason = "pipeline error: " + one_line(err)
                report.problems.append(Failure(document.id, reason))
                continue
            report.annotated += 1
            yield document.id, doc


def skip_finished(items: Iterable[Item], finished: Counter, report: Report) -> Iterator[Item]:
    """The items, less the documents a resumed journal already holds: the n-th document with
    an id is taken as done when the journal holds at least n documents with that id."""
    left = Counter(finished)
    for item in items:
        if isinstance(item, Document) and left[item.id] > 0 and item.text.strip():
            left[item.id] -= 1
            report.read += 1
            report.annotated += 1
            continue
        yield item


def annotate(
    inputs: List[Path] = typer.Argument(
        ...,
        help="Text files, directories (searched with --glob), JSONL files, or - for stdin",
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
    glob: str = typer.Option("*.txt", help="Files to read under directories, recursively"),
    input_format: InputFormat = typer.Option(
        InputFormat.auto,
        help='text: a file is a document; jsonl: a line {"id", "text"} is; '
        "auto: jsonl for .jsonl/.ndjson files, else text",
    ),
    encoding: str = typer.Option("utf-8", help="Encoding of the input files"),
    encoding_errors: EncodingErrors = typer.Option(
        EncodingErrors.strict,
        help="strict: an undecodable document fails; replace: its bad bytes become U+FFFD",
    ),
    max_chars: int = typer.Option(1_000_000, min=1, help="Longer documents fail as too large"),
    batch_size: int = typer.Option(
        32, min=1, help="Documents (or pieces of long ones) per nlp.pipe batch"
    ),
    max_piece_tokens: int = typer.Option(
        DEFAULT_MAX_PIECE_TOKENS,
        min=1,
        help="Longer documents are annotated in pieces of whole sentences of at most this many "
        "tokens, so memory does not grow with the document",
    ),
    n_process: int = typer.Option(1, min=1, help="Processes for nlp.pipe (CPU only)"),
    gpu_id: int = typer.Option(-1, help="GPU to run on, -1 for CPU"),
    errors: Optional[Path] = typer.Option(
        None,
        dir_okay=False,
        show_default=False,
        help="Write the failed and skipped documents here as JSONL",
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue an interrupted run from the journal it left beside --output",
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="No progress bar or summary, only the failures"
    ),
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error"),
) -> None:
    """Find the entities in documents and write them with character offsets and confidence.

    Exits with 1 if any document failed (undecodable, binary, too large, malformed JSONL line,
    pipeline error); the others are still annotated. Empty documents are skipped, not failed.
    """
    with errors_in_one_line(debug=debug):
        check_arguments(
            inputs,
            output=output,
            errors=errors,
            encoding=encoding,
            n_process=n_process,
            gpu_id=gpu_id,
            resume=resume,
        )
        fmt = output_format or format_for(output)
        journal: Optional[Journal] = None
        finished: Counter = Counter()
        if output is not None:
            settings = {"format": fmt.value, "model": model}
            journal, finished = open_journal(
                output, settings, resume=resume, sync_every=batch_size, quiet=quiet
            )
        paths = find_files(inputs, glob=glob)
        if not paths:
            typer.echo(f"secner annotate: no input files (none matched --glob {glob!r})", err=True)
        nlp = load_pipeline(model, gpu_id=gpu_id)
        # Long documents are annotated in pieces: --max-chars is the only length limit.
        nlp.max_length = max(nlp.max_length, max_chars)
        items = read_inputs(
            paths,
            input_format=input_format.value,
            encoding=encoding,
            encoding_errors=encoding_errors.value,
            max_chars=max_chars,
        )
        report = Report()
        if journal is not None and journal.count:
            report.resumed = journal.count
            for record in journal.records():
                report.entities.update(ent["label"] for ent in record["entities"])
            items = skip_finished(items, finished, report)
        # A text file is one document; a JSONL file holds an unknown number.
        total = None if any(is_jsonl(p, input_format.value) for p in paths) else len(paths)
        start = time.perf_counter()
        try:
            with tqdm(
                total=total,
                unit=" docs",
                file=sys.stderr,
                disable=quiet or not sys.stderr.isatty(),
            ) as bar:
                docs = annotate_items(
                    nlp,
                    items,
                    report=report,
                    batch_size=batch_size,
                    n_process=n_process,
                    max_piece_tokens=max_piece_tokens,
                )
                if journal is None:
                    write_stream(docs, fmt, report=report, bar=bar)
                else:
                    write_journal(docs, journal, fmt, report=report, bar=bar)
                    write_from_journal(journal, fmt, output)
                bar.update(report.done - bar.n)
        except KeyboardInterrupt:
            typer.echo(f"\nsecner annotate: interrupted, {stopped(output, journal)}", err=True)
            raise typer.Exit(130) from None
        except Exception as err:
            message = f"{one_line(err)}; {stopped(output, journal)}"
            raise CliError(message, code=1, traceback_hint=True) from err
        report.seconds = time.perf_counter() - start
        if errors is not None:
            write_failures(errors, report.problems)
    if quiet:
        for line in problem_lines(report.failed, limit=len(report.failed)):
            typer.echo(line, err=True)
    else:
        typer.echo(report.summary(), err=True)
    raise typer.Exit(1 if report.failed else 0)


def write_stream(
    docs: Iterable[Tuple[str, Doc]], fmt: OutputFormat, *, report: Report, bar: tqdm
) -> None:
    """Write each document to stdout as soon as it is annotated."""
    with atomic_output(None) as out:
        writer = WRITERS[fmt.value](out)
        for doc_id, doc in docs:
            writer.write(doc_id, doc)
            report.entities.update(ent.label_ for ent in doc.ents)
            bar.update(report.done - bar.n)
        writer.close()


def write_journal(
    docs: Iterable[Tuple[str, Doc]],
    journal: Journal,
    fmt: OutputFormat,
    *,
    report: Report,
    bar: tqdm,
) -> None:
    """Add each document to the journal as soon as it is annotated."""
    with_text = WRITERS[fmt.value].needs_text
    for doc_id, doc in docs:
        journal.append(document_record(doc_id, doc, with_text=with_text))
        report.entities.update(ent.label_ for ent in doc.ents)
        bar.update(report.done - bar.n)


def write_from_journal(journal: Journal, fmt: OutputFormat, output: Path) -> None:
    """Write the output from the finished journal, atomically, then remove the journal."""
    journal.close()
    with atomic_output(output) as out:
        writer = WRITERS[fmt.value](out)
        for record in journal.records():
            writer.write_record(record)
        writer.close()
    journal.remove()


def stopped(output: Optional[Path], journal: Optional[Journal]) -> str:
    """What a run that stops early leaves behind, for its last message."""
    if output is None:
        return "output on stdout is incomplete"
    message = f"{output} not written"
    if journal is not None:
        journal.close()
        if journal.count:
            message += (
                f"; the {journal.count} finished documents are kept in {journal.path}: "
                "rerun with --resume to continue"
            )
    return message


def open_journal(
    output: Path, settings: Dict[str, str], *, resume: bool, sync_every: int, quiet: bool
) -> Tuple[Journal, Counter]:
    """The journal of a run writing to `output`, and the documents it holds already (with
    `resume`). A journal left by an interrupted run is never reused without `resume`."""
    journal = Journal(journal_path(output), settings, sync_every=sync_every)
    if not journal.path.exists():
        if resume and not quiet:
            typer.echo(
                f"secner annotate: no journal at {journal.path}: nothing to resume, "
                "starting from the first document",
                err=True,
            )
        return journal, Counter()
    if not resume:
        raise CliError(
            f"{journal.path} holds the documents finished by an interrupted run: add --resume "
            "to continue it, or delete it to start over"
        )
    # The output's temporary file, if the run was killed while writing it.
    for temporary in leftover_temporaries(output):
        temporary.unlink(missing_ok=True)
    try:
        return journal, journal.resume()
    except JournalError as err:
        raise CliError(str(err)) from None
    except OSError as err:
        raise CliError(f"cannot read the journal {journal.path}: {err.strerror}") from None


@contextmanager
def errors_in_one_line(*, debug: bool) -> Iterator[None]:
    """Report an error as one line on stderr and exit with its code: 2 for an error in the
    arguments, 1 for the rest. `debug` prints the traceback first (without local variables:
    they could hold report text). Typer's and click's own exits go through."""
    try:
        yield
    except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
        raise
    except Exception as err:
        if isinstance(err, CliError):
            message, code, hint = str(err), err.code, err.traceback_hint
        else:
            message, code, hint = one_line(err), 1, True
        if debug:
            traceback.print_exc(file=sys.stderr)
        elif hint:
            message += " (--debug shows the traceback)"
        typer.echo(f"secner annotate: error: {message}", err=True)
        raise typer.Exit(code) from None


def check_arguments(
    inputs: List[Path],
    *,
    output: Optional[Path],
    errors: Optional[Path],
    encoding: str,
    n_process: int,
    gpu_id: int,
    resume: bool,
) -> None:
    """Reject what cannot work before the pipeline loads (exit code 2)."""
    missing = [str(p) for p in inputs if p != STDIN and not p.exists()]
    if missing:
        raise CliError(f"no such file or directory: {', '.join(missing)}")
    if inputs.count(STDIN) > 1:
        raise CliError("stdin (-) can be read only once")
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise CliError(f"--encoding: unknown encoding {encoding!r}") from None
    if n_process > 1 and gpu_id >= 0:
        raise CliError("--n-process > 1 runs on CPU only: drop it or --gpu-id")
    if output is not None and errors is not None and output.resolve() == errors.resolve():
        raise CliError("--errors must not be the --output file")
    if resume and output is None:
        raise CliError("--resume needs --output: the journal it resumes is kept beside it")
    for option, path in (("--output", output), ("--errors", errors)):
        if path is not None:
            check_writable(path, option)


def check_writable(path: Path, option: str) -> None:
    """Whether a file can be created at `path` (its missing parents are made when it is
    written); RAISES CliError naming the path if not."""
    if path.is_dir():
        raise CliError(f"{option}: {path} is a directory")
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CliError(f"{option}: cannot create {path}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CliError(f"{option}: cannot create {path}: no permission to write in {existing}")


def load_pipeline(model: str, *, gpu_id: int) -> Language:
    if gpu_id >= 0:
        try:
            spacy.require_gpu(gpu_id)
        except Exception as err:
            raise CliError(f"--gpu-id: GPU {gpu_id} is not usable: {one_line(err)}") from err
    try:
        return spacy.load(model)
    except Exception as err:
        # spaCy's E050 (neither an installed package nor a pipeline directory) is an OSError;
        # anything else is a pipeline that is there but cannot be loaded.
        if isinstance(err, OSError) and "E050" in str(err):
            raise CliError(f"--model: {err}") from err
        message = f"--model: cannot load the pipeline {model}: {one_line(err)}"
        raise CliError(message, traceback_hint=True) from err


def format_for(output: Optional[Path]) -> OutputFormat:
    suffix = output.suffix.lower() if output is not None else ""
    if suffix == ".csv":
        return OutputFormat.csv
    if suffix in (".html", ".htm"):
        return OutputFormat.html
    return OutputFormat.jsonl
