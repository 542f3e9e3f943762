"""Writing files so that a reader never sees half of one: all output goes through here."""
import glob
import json
import os
import secrets
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, List, Optional, TextIO, Union


@contextmanager
def atomic_path(path: Union[str, Path]) -> Iterator[Path]:
    """A temporary path beside `path` to write to (by any means: a library's `to_disk`,
    `savefig`), renamed over `path` when the block completes and removed on any exception
    (Ctrl-C included), so `path` is either the old file or the whole new one.

    The temporary name is hidden (`.NAME.XXXXXXXX.tmp.SUFFIX`) and keeps the suffix, for
    writers that choose the format from it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(path: Union[str, Path]) -> Iterator[Path]:
    """A temporary directory beside `path` to write to, put in place of `path` when the block
    completes and removed on any exception, so `path` is either the old or the whole new one."""
    path = Path(path)
    tag = secrets.token_hex(4)
    tmp = path.with_name(f".{path.name}.{tag}.tmp")
    old = path.with_name(f".{path.name}.{tag}.old")
    try:
        yield tmp
        if path.exists():
            # Two renames: a directory cannot replace a non-empty one in one step.
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():
            os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def leftover_temporaries(path: Union[str, Path]) -> List[Path]:
    """The temporary files of `atomic_path` beside `path` that a killed process left behind
    (only a process that is gone leaves one: call this when no other is writing `path`)."""
    path = Path(path)
    pattern = f".{glob.escape(path.name)}.{'[0-9a-f]' * 8}.tmp{glob.escape(path.suffix)}"
    return sorted(path.parent.glob(pattern))


@contextmanager
def atomic_output(path: Optional[Union[str, Path]]) -> Iterator[TextIO]:
    """A UTF-8 text stream for `path` that replaces it only when the block completes (see
    `atomic_path`); the data are flushed to disk before the rename. A new file gets the mode
    any new file gets (the umask applies), a replaced one keeps its mode. With no path, stdout,
    which gets whatever was written before a failure.
    """
    if path is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    path = Path(path)
    mode = path.stat().st_mode & 0o777 if path.exists() else None
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        if mode is not None:
            os.fchmod(fd, mode)
        # newline="": the csv module writes its own line endings.
        with open(fd, "w", encoding="utf-8", newline="") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())


def write_text(path: Union[str, Path], text: str) -> None:
    """Write a whole UTF-8 text file atomically."""
    with atomic_output(Path(path)) as out:
        out.write(text)


def write_json(path: Union[str, Path], data: Any) -> None:
    """Write data as an indented JSON file atomically."""
    write_text(path, json.dumps(data, indent=2) + "\n")
