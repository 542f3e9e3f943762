"""Running a pipeline over documents of any length in bounded memory.

A transformer pipe keeps every window's output on the doc (`doc._.trf_data`) and `ner_crf`
runs its BiLSTM over a whole doc at once, so `nlp.pipe` needs memory in proportion to the
longest document. `pipe_in_pieces` cuts a long doc into pieces of consecutive sentences after
the pipes that set sentences, runs the other pipes on the pieces in batches and joins each
doc's pieces back with `Doc.from_docs`. A doc that fits in one piece goes through exactly as
with `nlp.pipe`.
"""
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy
from spacy.language import Language
from spacy.tokens import Doc, Span

# Pieces of at most this many tokens: a 10 KB report (about 2,000 tokens) is one piece, and a
# batch of 32 pieces keeps the transformer's outputs for some 65,000 tokens.
DEFAULT_MAX_PIECE_TOKENS = 2048

# What a pipe declares in `assigns` when it sets sentence boundaries (sentencizer, senter,
# parser).
SENTENCE_ATTRS = ("doc.sents", "token.is_sent_start")

def pipe_in_pieces(
    nlp: Language,
    texts: Iterable[Any],
    *,
    max_piece_tokens: int = DEFAULT_MAX_PIECE_TOKENS,
    batch_size: Optional[int] = None,
    as_tuples: bool = False,
    n_process: int = 1,
) -> Iterator[Any]:
    """Like `nlp.pipe`, with memory bounded by the batch settings instead of the longest doc.

    Each text is tokenized and run through the pipes up to the first one that sets sentences
    (`sentencizer`, `senter`, `parser`: put it first), alone. A doc longer than
    `max_piece_tokens` is then cut into pieces of whole consecutive sentences of at most that
    many tokens (a longer sentence is cut every `max_piece_tokens` tokens, and so is a doc
    without sentence boundaries). The remaining pipes run on the pieces, `batch_size` pieces
    at a time, and the pieces of a doc are joined back into one doc with the original text,
    tokens, sentences, entities, span groups and token and span extensions (such as
    `span._.confidence`). Doc extensions of the pieces, `doc._.trf_data` included, are dropped:
    keeping them is what costs memory. A doc that fits in one piece is processed exactly as
    `nlp.pipe` would, its doc extensions kept.

    nlp (Language): The pipeline.
    texts (Iterable): Texts or Docs, or (text, context) tuples with `as_tuples`.
    max_piece_tokens (int): The most tokens in one piece.
    batch_size (Optional[int]): Pieces per batch; `nlp.batch_size` if None.
    as_tuples (bool): Take (text, context) tuples and yield (doc, context) tuples.
    n_process (int): Processes for the pipes after the split (as in `nlp.pipe`).
    YIELDS (Doc or Tuple[Doc, Any]): The annotated docs, in order.
    """
    if max_piece_tokens < 1:
        raise ValueError(f"max_piece_tokens must be at least 1, got {max_piece_tokens}")
    before = pipes_before_split(nlp)
    items = texts if as_tuples else ((text, None) for text in texts)

    def pieces() -> Iterator[Tuple[Doc, Tuple[int, int, Any]]]:
        for text, context in items:
            doc = text if isinstance(text, Doc) else nlp.make_doc(text)
            for _, proc in before:
                doc = proc(doc)
            bounds = piece_bounds(doc, max_piece_tokens)
            if len(bounds) == 1:
                yield doc, (0, 1, context, None)
                continue
            # What the caller put in user_data under plain keys (not extensions) goes to the
            # joined doc: the pieces do not carry it.
            plain = {k: v for k, v in doc.user_data.items() if not isinstance(k, tuple)}
            for k, (start, end) in enumerate(bounds):
                yield _piece(doc, start, end), (k, len(bounds), context, plain)

    outputs = nlp.pipe(
        pieces(),
        as_tuples=True,
        batch_size=batch_size,
        disable=[name for name, _ in before],
        n_process=n_process,
    )
    done: List[Doc] = []
    for piece, (k, n, context, plain) in outputs:
        if n == 1:
            doc = piece
        else:
            done.append(drop_doc_extensions(piece))
            if k < n - 1:
                continue
            doc = join_pieces(done)
            doc.user_data.update(plain)
            done = []
        yield (doc, context) if as_tuples else doc


def pipes_before_split(nlp: Language) -> List[Tuple[str, Any]]:
    """The pipes that run on whole docs: those up to the first one that sets sentences (none if
    no pipe does)."""
    for i, name in enumerate(nlp.pipe_names):
        if any(attr in nlp.get_pipe_meta(name).assigns for attr in SENTENCE_ATTRS):
            return list(nlp.pipeline[: i + 1])
    return []


def piece_bounds(doc: Doc, max_tokens: int) -> List[Tuple[int, int]]:
    """Token ranges that cover `doc`, each of whole consecutive sentences and at most
    `max_tokens` tokens, except that a longer sentence is cut every `max_tokens` tokens."""
    n = len(doc)
    if n <= max_tokens:
        return [(0, n)]
    if doc.has_annotation("SENT_START"):
        starts = numpy.flatnonzero(doc.to_array("SENT_START") == 1).tolist()
    else:
        starts = []
    sentences = _ranges(sorted({0, *starts}), n)
    bounds: List[Tuple[int, int]] = []
    start = end = 0
    for sent_start, sent_end in sentences:
        if sent_end - start <= max_tokens:
            end = sent_end
            continue
        if end > start:
            bounds.append((start, end))
            start = end
        # The sentence alone may still be too long: cut it, and carry on from its tail.
        while sent_end - start > max_tokens:
            bounds.append((start, start + max_tokens))
            start += max_tokens
        end = sent_end
    if end > start:
        bounds.append((start, end))
    return bounds


def _ranges(starts: Sequence[int], n: int) -> List[Tuple[int, int]]:
    return [(start, end) for start, end in zip(starts, [*starts[1:], n])]


def drop_doc_extensions(doc: Doc) -> Doc:
    """Remove the doc extensions (`doc._.trf_data` and the like) from `doc.user_data`, keeping
    token and span extensions, which are keyed by character offsets."""
    for key in list(doc.user_data):
        is_token_or_span = isinstance(key, tuple) and len(key) == 4 and key[0] == "._."
        if not (is_token_or_span and key[2] is not None):
            del doc.user_data[key]
    return doc


def _piece(doc: Doc, start: int, end: int) -> Doc:
    """Tokens `start` to `end` of `doc` as a doc of their own, with the token and span
    extensions and the span groups within them (what the pipes before the split set, or the
    caller on a Doc), so that `join_pieces` gives them back."""
    piece = doc[start:end].as_doc(copy_user_data=True)
    for key in list(piece.user_data):
        if not isinstance(key, tuple):
            del piece.user_data[key]  # plain keys go to the joined doc, not to each piece
    for name, group in doc.spans.items():
        piece.spans[name] = [
            Span(piece, span.start - start, span.end - start, label=span.label, kb_id=span.kb_id)
            for span in group
            if span.start >= start and span.end <= end
        ]
    return piece


def join_pieces(pieces: List[Doc]) -> Doc:
    """The doc the pieces were cut from: their texts end to end (each piece keeps the
    whitespace after its last token, so no separator is added)."""
    return Doc.from_docs(pieces, ensure_whitespace=False)
