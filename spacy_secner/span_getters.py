"""Which windows of a doc the transformer reads: strided windows that never cross a sentence."""
from functools import partial
from typing import Callable, Iterable, List

from spacy.tokens import Doc, Span
from spacy_transformers.span_getters import get_strided_spans
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
        # spacy-transformers' own striding, applied to each sentence (a Span slices like a Doc).
        spans.append([w for windows in get_strided_spans(sents, window, stride) for w in windows])
    return spans
