"""spaCy tokens to wordpieces and back, for a whole batch at once with array operations.

spacy-transformers builds the alignment with a Python set per token and a dict keyed by every
token of every doc, and splits a batch's outputs per doc by looking every token up again. These
functions give the same arrays (the tests compare them with spacy-transformers' own) from the
tokens' character offsets, with a few numpy operations per batch.
"""
from typing import Dict, List, Sequence, Tuple

import numpy
import torch
from spacy.attrs import IDX, LENGTH
from spacy.tokens import Doc, Span
from spacy_transformers.data_classes import FullTransformerBatch, TransformerData
from thinc.api import torch2xp
from thinc.types import Ragged
from transformers.file_utils import ModelOutput


def offset_alignment(spans: Sequence[Span], offsets: numpy.ndarray) -> Ragged:
    """For each token of the spans' docs (in order of first appearance), the indices of the
    wordpieces that cover its characters, in the flattened (n_spans x padded width) wordpiece
    array: spacy-transformers' `get_alignment_via_offset_mapping`.

    As there, a token owns its characters and the one character after it unless the next token
    starts there, a wordpiece aligns to every token that owns one of its characters, and
    wordpieces with no characters (special tokens, padding) align to none.

    offsets (numpy.ndarray): (n_spans, width, 2) character offsets of the wordpieces into each
        span's text, as the fast tokenizer's `offset_mapping`.
    """
    if len(spans) != len(offsets):
        raise ValueError("Cannot align batches of different sizes.")
    first_token, n_positions, char_starts, char_lengths = _token_table(spans)
    if not len(spans):
        return Ragged(numpy.zeros((0,), dtype="i"), numpy.zeros((n_positions,), dtype="i"))
    offsets = numpy.asarray(offsets, dtype="int64").reshape(len(spans), -1, 2)
    n_spans, width = offsets.shape[:2]
    # Every span's characters in a range of its own: span k starts at k * gap.
    gap = max(span.end_char - span.start_char for span in spans) + 2
    n_tokens = numpy.asarray([len(span) for span in spans], dtype="int64")
    window = numpy.repeat(numpy.arange(n_spans), n_tokens)
    position = numpy.repeat(first_token, n_tokens) + _ranges(n_tokens)
    span_first = numpy.repeat(first_token, n_tokens)
    start = char_starts[position] - char_starts[span_first] + window * gap
    end = start + char_lengths[position]  # the last character the token owns, inclusive
    following = numpy.append(start[1:], numpy.iinfo("int64").max)
    following[numpy.cumsum(n_tokens)[n_tokens > 0] - 1] = numpy.iinfo("int64").max
    end = numpy.minimum(end, following - 1)

    begin_char = offsets[:, :, 0] + numpy.arange(n_spans)[:, None] * gap
    end_char = offsets[:, :, 1] + numpy.arange(n_spans)[:, None] * gap
    real = offsets[:, :, 1] > offsets[:, :, 0]
    wordpiece = (numpy.arange(n_spans)[:, None] * width + numpy.arange(width)[None, :])[real]
    first = numpy.searchsorted(end, begin_char[real], side="left")
    last = numpy.searchsorted(start, end_char[real] - 1, side="right") - 1
    count = numpy.maximum(last - first + 1, 0)
    token = position[numpy.repeat(first, count) + _ranges(count)]
    wordpiece = numpy.repeat(wordpiece, count)
    order = numpy.lexsort((wordpiece, token))
    lengths = numpy.bincount(token, minlength=n_positions)
    return Ragged(wordpiece[order].astype("i"), lengths.astype("i"))


def split_by_doc(batch: FullTransformerBatch) -> List[TransformerData]:
    """The batch's outputs, wordpieces and alignment per doc: `FullTransformerBatch.split_by_doc`
    with the token positions taken from the spans' offsets instead of a dict of all tokens."""
    xp_output = ModelOutput()
    last_hidden_state = batch.model_output.last_hidden_state
    for key, output in batch.model_output.items():
        if isinstance(output, torch.Tensor):
            xp_output[key] = torch2xp(output)
        elif (
            isinstance(output, tuple)
            and all(isinstance(t, torch.Tensor) for t in output)
            and all(t.shape[0] == last_hidden_state.shape[0] for t in output)
        ):
            xp_output[key] = [torch2xp(t) for t in output]
    doc_first: Dict[int, int] = {}
    n_positions = 0
    for doc_spans in batch.spans:
        for span in doc_spans:
            if id(span.doc) not in doc_first:
                doc_first[id(span.doc)] = n_positions
                n_positions += len(span.doc)
    align_starts = numpy.concatenate([[0], numpy.cumsum(batch.align.lengths)])
    data, lengths = batch.align.dataXd, batch.align.lengths
    outputs = []
    start = prev_tokens = 0
    for doc_spans in batch.spans:
        if len(doc_spans) == 0 or len(doc_spans[0]) == 0:
            outputs.append(TransformerData.empty())
            continue
        base = doc_first[id(doc_spans[0].doc)]
        start_i, end_i = base + doc_spans[0].start, base + doc_spans[-1].end
        end = start + len(doc_spans)
        wordpieces = batch.wordpieces[start:end]
        align = Ragged(
            data[align_starts[start_i] : align_starts[end_i]] - prev_tokens,
            lengths[start_i:end_i],
        )
        model_output = ModelOutput()
        for key, output in xp_output.items():
            if isinstance(output, list):
                model_output[key] = [t[start:end] for t in output]
            else:
                model_output[key] = output[start:end]
        outputs.append(TransformerData(wordpieces=wordpieces, model_output=model_output, align=align))
        prev_tokens += wordpieces.input_ids.size
        start = end
    return outputs


def _token_table(spans: Sequence[Span]) -> Tuple[numpy.ndarray, int, numpy.ndarray, numpy.ndarray]:
    """The position of each span's first token among all tokens of the spans' docs (docs in
    order of first appearance, as spacy-transformers counts them), the number of positions,
    and each position's character offset and length."""
    doc_first: Dict[int, int] = {}
    docs: List[Doc] = []
    n_positions = 0
    first_token = numpy.zeros((len(spans),), dtype="int64")
    for i, span in enumerate(spans):
        doc = span.doc
        if id(doc) not in doc_first:
            doc_first[id(doc)] = n_positions
            docs.append(doc)
            n_positions += len(doc)
        first_token[i] = doc_first[id(doc)] + span.start
    if docs:
        table = numpy.concatenate([doc.to_array([IDX, LENGTH]) for doc in docs]).astype("int64")
    else:
        table = numpy.zeros((0, 2), dtype="int64")
    return first_token, n_positions, table[:, 0], table[:, 1]


def _ranges(counts: numpy.ndarray) -> numpy.ndarray:
    """0..n-1 for each n in `counts`, concatenated."""
    total = int(counts.sum())
    return numpy.arange(total) - numpy.repeat(numpy.cumsum(counts) - counts, counts)
