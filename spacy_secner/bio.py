"""BIO tag helpers shared by the pipe, the data reader and the evaluation."""
from typing import Iterable, List, Optional, Sequence, Tuple


def bio_tags(labels: Iterable[str]) -> List[str]:
    """The tag set of a label set: "O", then "B-X", "I-X" for each label in the given order."""
    return ["O"] + [f"{prefix}-{label}" for label in labels for prefix in ("B", "I")]


def biluo_to_bio(tags: Sequence[Optional[str]]) -> List[str]:
    """Turn spaCy's aligned BILUO tags into BIO; missing or misaligned tags ("-", None) become O.

    So in a doc with entity annotation, a token whose tag is missing trains as outside an
    entity. A doc with no entity annotation at all is left out of the loss by the pipe instead.
    """
    out = []
    for tag in tags:
        if not tag or tag == "-" or tag == "O":
            out.append("O")
        elif tag[0] in "BU":
            out.append("B" + tag[1:])
        else:
            out.append("I" + tag[1:])
    return out


def repair_bio(tags: Sequence[str]) -> List[str]:
    """Make a BIO sequence well formed the way seqeval's default mode reads it.

    An `I-X` that follows `O` or an entity of another type starts a new entity, so it becomes
    `B-X`: the entities are exactly those seqeval would score.
    """
    out: List[str] = []
    prev = "O"
    for tag in tags:
        if tag.startswith("I-") and (prev == "O" or prev[2:] != tag[2:]):
            tag = "B-" + tag[2:]
        out.append(tag)
        prev = tag
    return out


def entity_bounds(tags: Sequence[str]) -> List[Tuple[int, int]]:
    """(start, end) token offsets of the entities in a BIO sequence, read as seqeval does."""
    bounds: List[List[int]] = []
    for i, tag in enumerate(repair_bio(tags)):
        if tag.startswith("B-"):
            bounds.append([i, i + 1])
        elif tag.startswith("I-"):
            bounds[-1][1] = i + 1
    return [(start, end) for start, end in bounds]
