"""The options of `secner annotate`: their types, the checks made before the pipeline loads, and
errors reported in one line."""
import importlib.util
import os
import sys
import traceback
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import click
import spacy
import typer
from spacy.language import Language

from ..documents import check_text_encoding
from .escapes import visible
from .readers import STDIN


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


class Engine(str, Enum):
    process = "process"
    ray = "ray"


class CliError(Exception):
    """An error `secner annotate` reports in one line, with its exit code."""

    def __init__(self, message: str, *, code: int = 2, traceback_hint: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.traceback_hint = traceback_hint


@contextmanager
def errors_in_one_line(*, debug: bool) -> Iterator[None]:
    """Report an error as one line on stderr and exit with its code: 2 for an error in the
    arguments, 1 for the rest. `debug` prints the traceback first (without local variables:
    they could hold report text). Typer's and click's own exits and usage errors go through."""
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
        # Paths and reasons may come from the inputs: their control characters escaped.
        typer.echo(visible(f"secner annotate: error: {message}"), err=True)
        raise typer.Exit(code) from None


def one_line(err: BaseException, *, limit: int = 300) -> str:
    """An exception as one short line: its type and message, whitespace runs collapsed."""
    if isinstance(err, OSError) and err.strerror:
        message = err.strerror + (f": {err.filename}" if err.filename else "")
    else:
        message = str(err)
    text = " ".join(f"{type(err).__name__}: {message}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
        raise CliError(f"no such file or directory: {', '.join(missing)}")
    if inputs.count(STDIN) > 1:
        raise CliError("stdin (-) can be read only once")
    try:
        check_text_encoding(encoding)
    except LookupError as err:
        raise CliError(f"--encoding: {err}") from None
    if n_process > 1 and gpu_id >= 0:
        raise CliError("--n-process > 1 runs on CPU only: drop it or --gpu-id")
    if output is not None and errors is not None and output.resolve() == errors.resolve():
        raise CliError("--errors must not be the --output file")
    for option, path in (("--output", output), ("--errors", errors)):
        if path is not None:
            check_not_an_input(path, inputs, option)
            check_writable(path, option)


def check_not_an_input(path: Path, inputs: List[Path], option: str) -> None:
    """RAISES CliError if `path` is one of the input files (a link or another name for it
    included): the run would replace the documents it reads."""
    if not path.exists():
        return
    for given in inputs:
        if given != STDIN and not given.is_dir() and os.path.samefile(given, path):
            raise CliError(f"{option}: {path} is an input file: it would be overwritten")


def check_writable(path: Path, option: str) -> None:
    """Whether a file can be created at `path` (its missing parents are made when it is
    written); RAISES CliError naming the path if not (before the pipeline loads)."""
    if path.is_dir():
        raise CliError(f"{option}: {path} is a directory")
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CliError(f"{option}: cannot create {path}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CliError(f"{option}: cannot create {path}: no permission to write in {existing}")


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


def check_ray_arguments(
    model: str, *, output_format: OutputFormat, address: Optional[str], n_process: int, gpu_id: int
) -> None:
    """Reject what `--engine ray` cannot do (exit code 2)."""
    if output_format in (OutputFormat.html, OutputFormat.stix):
        # Both are made from the docs themselves (the HTML page holds every text until the end),
        # while the actors send back records.
        raise typer.BadParameter(
            f"{output_format.value} is written by --engine process only", param_hint="--format"
        )
    if n_process > 1:
        raise typer.BadParameter("use --actors with --engine ray", param_hint="--n-process")
    if gpu_id >= 0:
        raise typer.BadParameter("use --gpus-per-actor with --engine ray", param_hint="--gpu-id")
    if importlib.util.find_spec("ray") is None:
        raise typer.BadParameter(
            "needs Ray: pip install 'spacy-secner[ray]'", param_hint="--engine"
        )
    # A local cluster runs where this command does, so the pipeline must be found here; a
    # remote one may have it installed where this machine has not.
    local = address is None and "RAY_ADDRESS" not in os.environ
    if local and not (Path(model).exists() or spacy.util.is_package(model)):
        raise typer.BadParameter(
            f"no pipeline package or directory named {model!r}", param_hint="--model"
        )


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
