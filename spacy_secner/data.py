"""Reading DNRTI: CoNLL-style `token tag` lines into spaCy docs, every quirk handled on purpose.

DNRTI's files (Wang et al., TrustCom 2020) have CRLF line endings, a blank line between
sentences, and a few irregular lines. What happens to each kind, counted in `ReadStats`:

- CRLF: lines end at `\n`, `\r\n` or `\r` (as with universal newlines), so `\r` never
  reaches a token.
- Several spaces or trailing spaces around the tag: fields are split on runs of whitespace.
- A line with a tag and no token (` O`, `O`): skipped (`tag_only_lines`).
- A whitespace-only line: a sentence break, like an empty one.
- A token holding a space (`skills. In O`): split into its words (`split_tokens`); the
  first keeps the tag, the others continue the entity as `I-X` (or stay `O`).
- Invisible control and format characters (backspace U+0008, zero-width joiner U+200D):
  removed from the token (`stripped_chars`); a token left empty is dropped.
- An orphan `I-X` (after `O` or another type): read as `B-X` (`repaired_tags`), which is how
  seqeval's default mode scores it, so our entity counts and scores match published ones.
- Other non-ASCII tokens (dashes, ®, ™, curly quotes) are kept verbatim (`non_ascii_tokens`).
- Anything else (an unknown tag, a token without a tag, undecodable bytes, a third column
  such as `APT28 B-HackOrg B-HackOrg` or tab-separated ones) stops the read with a
  `DNRTIFormatError` naming the file and line; a file without any sentence is an error too.
"""
import os
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Set, Tuple, Union

from spacy.tokens import Doc
from spacy.vocab import Vocab

from .bio import repair_bio
from .detokenize import join_tokens

DNRTI_LABELS = (
    "Area",
    "Exp",
    "Features",
    "HackOrg",
    "Idus",
    "OffAct",
    "Org",
    "Purp",
    "SamFile",
    "SecTeam",
    "Time",
    "Tool",
    "Way",
)
_WHITESPACE = re.compile(r"\s+")
_TABS = re.compile(r"\t+")
# The project asset, extracted by `spacy project run extract`.
ASSET_DIR = Path("assets/dnrti")


def dnrti_dir(path: Optional[Union[str, Path]] = None) -> Path:
    """Where DNRTI's train.txt, valid.txt and test.txt are: `path` if given, else the
    directory in $DNRTI_DIR, else the project asset `assets/dnrti`."""
    return Path(path or os.environ.get("DNRTI_DIR") or ASSET_DIR)


class DNRTIFormatError(ValueError):
    """A line of a DNRTI file that cannot be read; the message names file and line."""


@dataclass
class ReadStats:
    """What reading one file found and did."""

    path: str
    sentences: int = 0
    tokens: int = 0
    entities: Counter = field(default_factory=Counter)
    tag_only_lines: int = 0
    split_tokens: int = 0
    stripped_chars: int = 0
    dropped_empty_tokens: int = 0
    repaired_tags: int = 0
    non_ascii_tokens: int = 0

    def as_dict(self) -> Dict:
        d = dict(self.__dict__)
        d["entities"] = dict(sorted(self.entities.items()))
        d["entities_total"] = sum(self.entities.values())
        return d


def read_sentences(
    path: Union[str, Path], *, labels: Iterable[str] = DNRTI_LABELS, stats: Optional[ReadStats] = None
) -> Iterator[Tuple[List[str], List[str]]]:
    """Yield `(words, bio_tags)` per sentence of a DNRTI-style file, tags repaired to valid BIO.

    path (Union[str, Path]): The file.
    labels (Iterable[str]): Entity types a tag may name; any other tag is an error.
    stats (Optional[ReadStats]): Filled in with what was read, skipped and repaired.
    """
    path = Path(path)
    stats = stats if stats is not None else ReadStats(str(path))
    valid = {"O"} | {f"{p}-{label}" for label in labels for p in "BI"}
    words: List[str] = []
    tags: List[str] = []
    found = 0
    for lineno, line in _lines(path):
        fields = _WHITESPACE.split(line.strip())
        if fields == [""]:
            if words:
                found += 1
                yield _finish(words, tags, stats)
                words, tags = [], []
            continue
        tag = fields[-1]
        if tag not in valid:
            raise DNRTIFormatError(
                f"{path}:{lineno}: unknown tag {tag!r} in line {line.rstrip()!r} "
                f"(expected O, B-X or I-X with X in {sorted(labels)})"
            )
        _check_columns(path, lineno, line, fields, valid)
        if len(fields) == 1:
            stats.tag_only_lines += 1
            continue
        cleaned = [_clean(w, stats) for w in fields[:-1]]
        pieces = [w for w in cleaned if w]
        stats.dropped_empty_tokens += len(cleaned) - len(pieces)
        if not pieces:
            continue
        if len(pieces) > 1:
            stats.split_tokens += 1
        for i, word in enumerate(pieces):
            words.append(word)
            tags.append(tag if i == 0 or tag == "O" else "I-" + tag[2:])
    if words:
        found += 1
        yield _finish(words, tags, stats)
    if not found:
        # An empty corpus would otherwise train and score on nothing without a word.
        raise DNRTIFormatError(
            f"{path}: no sentences (the file is empty or has only blank and tag-only lines)"
        )


def _lines(path: Path) -> Iterator[Tuple[int, str]]:
    """Number and text of each line, split at LF, CRLF or a lone CR, as universal newlines split.

    Each line is decoded on its own, so an undecodable byte is reported at its own line (a text
    stream decodes ahead of the line being read).
    """
    lineno = 0
    with path.open("rb") as f:
        # Binary lines end at LF only; bytes.splitlines() then splits at a lone CR too.
        for chunk in f:
            for raw in chunk.splitlines():
                lineno += 1
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise DNRTIFormatError(f"{path}:{lineno}: not UTF-8 ({err})") from err
                yield lineno, line


def _check_columns(path: Path, lineno: int, line: str, fields: List[str], valid: Set[str]) -> None:
    """Raise on a line with more columns than `token tag`.

    A token may hold spaces (`skills. In O`), so extra fields alone are no error; a tag before
    the last field, or a third tab-separated column, means another column format, whose last
    column would otherwise silently be read as the gold tag and its tags as words.
    """
    columns = _TABS.split(line.strip())
    if len(columns) > 2 or (len(fields) > 2 and any(f in valid for f in fields[:-1])):
        raise DNRTIFormatError(
            f"{path}:{lineno}: more than two columns in line {line.rstrip()!r} "
            "(expected `token tag`, with a tag in the last column only)"
        )


def read_docs(
    path: Union[str, Path],
    vocab: Vocab,
    *,
    labels: Iterable[str] = DNRTI_LABELS,
    limit: Optional[int] = None,
) -> Tuple[List[Doc], ReadStats]:
    """Read a DNRTI-style file into one `Doc` per sentence, with gold `doc.ents`.

    The dataset's own tokens are kept as the doc's tokens. `limit` keeps the first N sentences.
    RETURNS (Tuple[List[Doc], ReadStats]): The docs and what reading found.
    """
    stats = ReadStats(str(path))
    docs = []
    for words, tags in read_sentences(path, labels=labels, stats=stats):
        if limit is not None and len(docs) >= limit:
            break
        # Natural spacing, so `doc.text` reads like the report the sentence came from.
        docs.append(Doc(vocab, words=words, spaces=join_tokens(words)[1], ents=tags))
    if limit is not None:
        # Report what the kept docs hold, not the whole file.
        stats.sentences = len(docs)
        stats.tokens = sum(len(d) for d in docs)
        stats.entities = Counter(e.label_ for d in docs for e in d.ents)
    return docs, stats


def _finish(words: List[str], tags: List[str], stats: ReadStats) -> Tuple[List[str], List[str]]:
    repaired = repair_bio(tags)
    stats.repaired_tags += sum(a != b for a, b in zip(tags, repaired))
    stats.sentences += 1
    stats.tokens += len(words)
    stats.non_ascii_tokens += sum(not w.isascii() for w in words)
    stats.entities.update(t[2:] for t in repaired if t.startswith("B-"))
    return words, repaired


def _clean(word: str, stats: ReadStats) -> str:
    # Backspaces and zero-width joiners are invisible and split wordpieces for nothing.
    kept = "".join(c for c in word if unicodedata.category(c) not in ("Cc", "Cf"))
    stats.stripped_chars += len(word) - len(kept)
    return kept
