"""`secner annotate`: the entities (and indicators of compromise) a trained pipeline finds in
text, PDF and HTML files, directories, JSONL or stdin, written as JSONL, CSV, a displaCy HTML
report or STIX 2.1 bundles."""

import os
import sys
import time
from collections import Counter, deque
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Deque, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import typer
from spacy.language import Language
from spacy.tokens import Doc
from tqdm import tqdm

from ..atomic import atomic_output, leftover_temporaries
from ..documents import mark_blocks
from ..long_docs import DEFAULT_MAX_PIECE_TOKENS, pipe_in_pieces
from .options import (
    CliError,
    EncodingErrors,
    Engine,
    InputFormat,
    OutputFormat,
    check_arguments,
    check_format,
    check_not_an_input,
    check_ray_arguments,
    errors_in_one_line,
    format_for,
    load_pipeline,
    one_line,
)
from .readers import (
    DEFAULT_GLOBS,
    Document,
    Failure,
    Item,
    find_files,
    is_jsonl,
    read_inputs,
)
from .journal import Journal, JournalError, journal_path
from .escapes import visible
from .writers import IOCS_KEY, WRITERS, WriteError, document_record, write_failures


@dataclass
class Report:
    """What happened to the documents of a run."""

    read: int = 0
    annotated: int = 0
    problems: List[Failure] = field(default_factory=list)
    entities: Counter = field(default_factory=Counter)
    iocs: Counter = field(default_factory=Counter)
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
        rate = (self.annotated - self.resumed) / self.seconds if self.seconds > 0 else 0.0
        resumed = f" ({self.resumed} from the journal)" if self.resumed else ""
        lines = [
            f"secner annotate: {self.read} document{'' if self.read == 1 else 's'} read, "
            f"{self.annotated} annotated{resumed}, "
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
    # Ids and reasons come from the inputs: shown with their control characters escaped.
    lines = [
        visible(f"  {'skipped' if p.skipped else 'failed'}: {p.id}: {p.reason}")
        for p in problems[:limit]
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
    nlp: Language,
    items: Iterable[Item],
    *,
    report: Report,
    batch_size: int,
    n_process: int,
    max_piece_tokens: int = DEFAULT_MAX_PIECE_TOKENS,
) -> Iterator[Tuple[str, Doc]]:
    """Run the pipeline over the documents among `items`, in order (see `annotate_documents`).

    Failures and empty documents go to `report` instead. An error from `items` itself
    (InputError) ends the run.

    YIELDS (Tuple[str, Doc]): The id and the annotated doc of each document.
    """
    source = iter(items)

    def documents() -> Iterator[Document]:
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
                yield item

    results = annotate_documents(
        nlp,
        documents(),
        batch_size=batch_size,
        n_process=n_process,
        max_piece_tokens=max_piece_tokens,
    )
    for document, result in results:
        if isinstance(result, Failure):
            report.problems.append(result)
        else:
            report.annotated += 1
            yield document.id, result


def annotate_documents(
    nlp: Language,
    documents: Iterable[Document],
    *,
    batch_size: int,
    n_process: int = 1,
    max_piece_tokens: int = DEFAULT_MAX_PIECE_TOKENS,
) -> Iterator[Tuple[Document, Union[Doc, Failure]]]:
    """Run the pipeline over `documents`, isolating the documents that fail: the per-batch
    code of `secner annotate`, in process and in each Ray actor alike. Documents longer than
    `max_piece_tokens` tokens are annotated in pieces of whole sentences (`pipe_in_pieces`),
    so memory does not grow with the longest document.

    When the pipeline raises, the documents it had taken but not returned are retried one at a
    time, so only the one that raises fails, and the run goes on. An error raised by
    `documents` itself is not the pipeline's and ends the run.

    YIELDS (Tuple[Document, Union[Doc, Failure]]): Each document, in order, with its doc or
        its failure.
    """
    source = iter(documents)
    pending: Deque[Document] = deque()
    source_failed = False

    def feed() -> Iterator[Tuple[Union[str, Doc], Document]]:
        nonlocal source_failed
        while True:
            try:
                document = next(source)
            except StopIteration:
                return
            except BaseException:
                source_failed = True
                raise
            pending.append(document)
            yield make_input(nlp, document), document

    while True:
        try:
            for doc, document in pipe_in_pieces(
                nlp,
                feed(),
                as_tuples=True,
                batch_size=batch_size,
                n_process=n_process,
                max_piece_tokens=max_piece_tokens,
            ):
                pending.popleft()
                yield document, doc
            return
        except Exception:
            if source_failed or not pending:
                raise  # not a document's fault: the input ended or the pipeline cannot run
        while pending:
            document = pending.popleft()
            try:
                (doc,) = pipe_in_pieces(
                    nlp,
                    [make_input(nlp, document)],
                    batch_size=batch_size,
                    max_piece_tokens=max_piece_tokens,
                )
            except Exception as err:
                yield document, Failure(document.id, "pipeline error: " + one_line(err))
                continue
            yield document, doc


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
    engine: Engine = typer.Option(
        Engine.process,
        help="process: annotate here; ray: on a pool of actors of a Ray cluster "
        "(pip install 'spacy-secner[ray]'; JSONL and CSV only)",
    ),
    address: Optional[str] = typer.Option(
        None,
        help="--engine ray: the cluster (auto, ray://HOST:10001). "
        "Default: $RAY_ADDRESS, else a new local cluster",
        show_default=False,
    ),
    actors: Optional[int] = typer.Option(
        None,
        min=1,
        help="--engine ray: actors, each loading the pipeline once. "
        "Default: one per CPU of the cluster (per GPU share with --gpus-per-actor)",
        show_default=False,
    ),
    gpus_per_actor: float = typer.Option(
        0.0, min=0.0, help="--engine ray: GPUs per actor; a fraction shares a GPU"
    ),
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
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue an interrupted run from the journal it left beside --output",
    ),
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error"),
) -> None:
    """Find the entities in documents and write them with character offsets and confidence,
    and the indicators of compromise where the pipeline has `cti_iocs`.

    Exits with 1 if any document failed (undecodable, binary, too large, malformed JSONL line,
    a PDF that is encrypted, corrupt, truncated or scanned, an HTML page with no main text,
    pipeline error, STIX export error); the others are still annotated. Empty documents are
    skipped, not failed.
    """
    with errors_in_one_line(debug=debug):
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
        if engine is Engine.ray:
            check_ray_arguments(
                model, output_format=fmt, address=address, n_process=n_process, gpu_id=gpu_id
            )
        elif address is not None or actors is not None or gpus_per_actor:
            raise typer.BadParameter(
                "--address, --actors and --gpus-per-actor need --engine ray", param_hint="--engine"
            )
        globs = glob or DEFAULT_GLOBS[input_format.value]
        paths = find_files(inputs, glob=globs)
        # The files found under an input directory are inputs too.
        for option, target in (("--output", output), ("--errors", errors)):
            if target is not None:
                check_not_an_input(target, paths, option)
        journal, finished = open_journal(
            output,
            fmt,
            model=model,
            keep_text=keep_text,
            resume=resume,
            sync_every=batch_size,
            quiet=quiet,
        )
        if not paths:
            shown = ", ".join(repr(g) for g in globs)
            typer.echo(f"secner annotate: no input files (none matched --glob {shown})", err=True)
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
        if journal is not None and journal.count:
            report.resumed = journal.count
            for record in journal.records():
                count_record(record, report=report)
            items = skip_finished(items, finished, report)
        with ExitStack() as stack:
            results: Iterator[Tuple[str, Union[Doc, Dict[str, Any]]]]
            engine_errors: Tuple[type, ...] = ()
            if engine is Engine.ray:
                import ray.exceptions

                from .. import distributed

                try:
                    stack.enter_context(distributed.cluster(address))
                except Exception as err:  # ray.init raises plain exceptions (timeouts, connection)
                    where = address or os.environ.get("RAY_ADDRESS") or "a new local cluster"
                    typer.echo(f"secner annotate: cannot start or reach Ray ({where}): {err}", err=True)
                    raise typer.Exit(1) from None
                engine_errors = (ray.exceptions.RayError,)
                results = distributed.annotate_items_on_ray(
                    items,
                    model,
                    report=report,
                    actors=actors or distributed.default_actors(gpus_per_actor),
                    gpus_per_actor=gpus_per_actor,
                    batch_size=batch_size,
                    max_chars=max_chars,
                    keep_text=keep_text,
                    max_piece_tokens=max_piece_tokens,
                )
            else:
                if n_process > 1:
                    # Forked workers cannot use the OpenMP threads this process started (they
                    # wait for them forever, a limit of GNU OpenMP): no threads here, and each
                    # worker is one process of one thread anyway.
                    import torch

                    torch.set_num_threads(1)
                nlp = load_pipeline(model, gpu_id=gpu_id)
                # Long documents are annotated in pieces: --max-chars is the only length limit.
                nlp.max_length = max(nlp.max_length, max_chars)
                results = annotate_items(
                    nlp,
                    items,
                    report=report,
                    batch_size=batch_size,
                    n_process=n_process,
                    max_piece_tokens=max_piece_tokens,
                )
            start = time.perf_counter()
            try:
                with tqdm(
                    total=total,
                    unit=" docs",
                    file=sys.stderr,
                    disable=quiet or not sys.stderr.isatty(),
                ) as bar:
                    if journal is None:
                        write_results(results, fmt, output, writer_options, report=report, bar=bar)
                    else:
                        write_journal(results, journal, keep_text=keep_text, report=report, bar=bar)
                        write_from_journal(journal, fmt, output, writer_options)
                    bar.update(report.done - bar.n)
            except KeyboardInterrupt:
                typer.echo(f"\nsecner annotate: interrupted, {stopped(output, journal)}", err=True)
                raise typer.Exit(130) from None
            except engine_errors as err:
                # Ray's message holds the remote traceback: its first and last lines say what broke.
                lines = str(err).strip().splitlines() or [type(err).__name__]
                cause = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
                kept = stopped(output, journal)
                typer.echo(
                    visible(f"secner annotate: the Ray run failed, {kept}: {cause}"), err=True
                )
                raise typer.Exit(1) from None
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


def write_result(
    writer: Any, doc_id: str, result: Union[Doc, Dict[str, Any]], *, report: Report
) -> None:
    """Write a doc annotated here, or the `document_record` a Ray actor made, and count it."""
    if isinstance(result, Doc):
        try:
            writer.write(doc_id, result)
        except WriteError as err:
            # Annotated but not written: it fails like any other document.
            report.annotated -= 1
            report.problems.append(Failure(doc_id, str(err)))
            return
        report.entities.update(ent.label_ for ent in result.ents)
        if IOCS_KEY in result.spans:
            report.iocs.update(span.label_ for span in result.spans[IOCS_KEY])
    else:
        writer.write_record(result)
        count_record(result, report=report)


def count_record(record: Dict[str, Any], *, report: Report) -> None:
    report.entities.update(ent["label"] for ent in record["entities"])
    report.iocs.update(ioc["label"] for ioc in record.get("iocs") or [])


def write_results(
    results: Iterable[Tuple[str, Union[Doc, Dict[str, Any]]]],
    fmt: OutputFormat,
    output: Optional[Path],
    writer_options: Dict[str, Any],
    *,
    report: Report,
    bar: tqdm,
) -> None:
    """Write each document as it is annotated: to stdout, or (STIX) to the output, atomically."""
    with atomic_output(output) as out:
        writer = WRITERS[fmt.value](out, **writer_options)
        for doc_id, result in results:
            write_result(writer, doc_id, result, report=report)
            bar.update(report.done - bar.n)
        writer.close()


def write_journal(
    results: Iterable[Tuple[str, Union[Doc, Dict[str, Any]]]],
    journal: Journal,
    *,
    keep_text: bool,
    report: Report,
    bar: tqdm,
) -> None:
    """Add each document's record to the journal as soon as it is annotated."""
    for doc_id, result in results:
        if isinstance(result, Doc):
            text = keep_text or journal.header["format"] == OutputFormat.html.value
            result = document_record(doc_id, result, keep_text=text)
        journal.append(result)
        count_record(result, report=report)
        bar.update(report.done - bar.n)


def write_from_journal(
    journal: Journal, fmt: OutputFormat, output: Path, writer_options: Dict[str, Any]
) -> None:
    """Write the output from the finished journal, atomically, then remove the journal."""
    journal.close()
    with atomic_output(output) as out:
        writer = WRITERS[fmt.value](out, **writer_options)
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
    output: Optional[Path],
    fmt: OutputFormat,
    *,
    model: str,
    keep_text: bool,
    resume: bool,
    sync_every: int,
    quiet: bool,
) -> Tuple[Optional[Journal], Counter]:
    """The journal of a run writing to `output`, and the documents it holds already (with
    `resume`); None for output on stdout and for STIX, whose bundles are built from the docs.
    A journal left by an interrupted run is never reused without `resume`."""
    if output is None or fmt == OutputFormat.stix:
        if resume:
            why = "--output" if output is None else "another format than stix"
            raise CliError(f"--resume needs {why}: the journal it resumes keeps records")
        return None, Counter()
    settings = {"format": fmt.value, "model": model, "keep_text": keep_text}
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
