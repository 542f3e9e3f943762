"""Which windows of a doc the transformer reads: strided windows that never cross a sentence."""
from functools import partial
from typing import Callable, Iterable, Iterator, List, Tuple

from spacy.tokens import Doc, Span
from spacy_transformers.util import registry


@registry.span_getters("spacy-secner.sent_strided_spans.v1")
def configure_sent_strided_spans(
    window: int = 128, stride: int = 96
) -> Callable[[Iterable[Doc]], List[List[Span]]]:
    """Strided windows (of `window` tokens, every `stride` tokens) inside each sentence.

    The model learns on DNRTI's single sentences, so on a whole report it should read each
    sentence on its own too: windows that run across sentence boundaries give it context it
    never saw in training (and, with DNRTI's shuffled sentences, unrelated context). Sentences
    come from any earlier pipe that sets them (`sentencizer`, `senter`, `parser`); a doc without
    sentence boundaries is windowed as a whole, exactly like
    `spacy-transformers.strided_spans.v1`, as in training, where no sentencizer runs.
    """
    if window < 1 or not 1 <= stride <= window:
        raise ValueError(f"Need window >= stride >= 1, got window={window}, stride={stride}")
    return partial(get_sent_strided_spans, window=window, stride=stride)


def get_sent_strided_spans(docs: Iterable[Doc], window: int, stride: int) -> List[List[Span]]:
    spans = []
    for doc in docs:
        sents = list(doc.sents) if doc.has_annotation("SENT_START") else [doc[:]]
        spans.append(
            [
                doc[sent.start + start : sent.start + end]
                for sent in sents
                for start, end in strided_bounds(len(sent), window, stride)
            ]
        )
    return spans


def strided_bounds(length: int, window: int, stride: int) -> Iterator[Tuple[int, int]]:
    """The windows of `spacy-transformers.strided_spans.v1` over `length` tokens."""
    start = 0
    for _ in range(length // stride):
        yield start, min(start + window, length)
        if start + window >= length:
            return
        start += stride
    if start < length:
        yield start, length
