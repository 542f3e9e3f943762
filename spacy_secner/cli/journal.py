"""The journal of a `secner annotate` run: the finished documents, kept beside the output so
that a run that dies (killed, out of memory, a reboot) can be resumed with `--resume`.

The journal is `.OUTPUT.journal` in the output's directory: a JSON header line, then one line
per annotated document (`{"id", "entities"}`, plus `"text"` for the HTML report), appended and
flushed as each document is done, and synced to disk every `sync_every` documents. The output
itself is written from the journal, atomically, when the run completes; then the journal is
removed. A line cut short by a crash is dropped when the journal is reopened.
"""
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, TextIO

JOURNAL_VERSION = 1


class JournalError(ValueError):
    """A journal that cannot be resumed: unreadable, or written by a run with other settings."""


def journal_path(output: Path) -> Path:
    """Where the journal of a run writing to `output` lives."""
    return output.with_name(f".{output.name}.journal")


class Journal:
    """An append-only file of finished documents (see the module docstring).

    path (Path): The journal file.
    settings (Dict[str, Any]): What the records depend on (output format, pipeline); a journal
        written with other settings is not resumed.
    sync_every (int): Documents between two syncs to disk.
    """

    def __init__(self, path: Path, settings: Dict[str, Any], *, sync_every: int = 32) -> None:
        self.path = path
        self.header = {"secner_journal": JOURNAL_VERSION, **settings}
        self.sync_every = max(1, sync_every)
        self.count = 0
        self._out: Optional[TextIO] = None
        self._unsynced = 0

    def resume(self) -> Counter:
        """Read the journal left by an interrupted run and continue it: a line cut short at the
        end is dropped. RAISES JournalError if it cannot be resumed.

        RETURNS (Counter): How many finished documents the journal holds under each id.
        """
        done: Counter = Counter()
        with self.path.open("rb") as f:
            complete = 0  # bytes up to the end of the last whole line
            for lineno, raw in enumerate(f, 1):
                if not raw.endswith(b"\n"):
                    break  # the write the crash interrupted
                try:
                    record = json.loads(raw)
                except ValueError:
                    raise JournalError(
                        f"{self.path}:{lineno} is not a journal record: delete the journal to "
                        "start over"
                    ) from None
                if lineno == 1:
                    self._check_header(record)
                elif not isinstance(record, dict) or not isinstance(record.get("id"), str):
                    raise JournalError(f"{self.path}:{lineno} is not a journal record")
                else:
                    done[record["id"]] += 1
                complete += len(raw)
        if complete == 0:
            # Killed while writing the header: nothing was finished.
            self.path.unlink()
            return done
        self.count = sum(done.values())
        with self.path.open("r+b") as f:
            f.truncate(complete)
        self._out = self.path.open("a", encoding="utf-8")
        return done

    def _check_header(self, header: Any) -> None:
        if not isinstance(header, dict) or header.get("secner_journal") != JOURNAL_VERSION:
            raise JournalError(f"{self.path} is not a secner annotate journal")
        for key, value in self.header.items():
            if header.get(key) != value:
                raise JournalError(
                    f"{self.path} was written by a run with {key} {header.get(key)!r}, not "
                    f"{value!r}: rerun with the same settings, or delete it to start over"
                )

    def append(self, record: Dict[str, Any]) -> None:
        """Add a finished document; the file is created with the first one."""
        if self._out is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            self._out = open(fd, "w", encoding="utf-8")
            self._out.write(json.dumps(self.header) + "\n")
        self._out.write(json.dumps(record, ensure_ascii=False) + "\n")
        # Flushed to the OS now: a killed process loses nothing. Synced to disk per batch: a
        # power cut or a reboot loses at most the last batch.
        self._out.flush()
        self.count += 1
        self._unsynced += 1
        if self._unsynced >= self.sync_every:
            self.sync()

    def sync(self) -> None:
        if self._out is not None and self._unsynced:
            self._out.flush()
            os.fsync(self._out.fileno())
        self._unsynced = 0

    def close(self) -> None:
        """Sync and close; an empty journal is removed, as there is nothing to resume."""
        if self._out is None:
            return
        self.sync()
        self._out.close()
        self._out = None
        if self.count == 0:
            self.path.unlink(missing_ok=True)

    def records(self) -> Iterator[Dict[str, Any]]:
        """The finished documents, in the order they were added (call `close` first)."""
        if not self.path.exists():
            return
        with self.path.open(encoding="utf-8") as f:
            next(f, None)  # the header
            for line in f:
                yield json.loads(line)

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)
