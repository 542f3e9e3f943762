"""The benchmark's texts: DNRTI test sentences as raw text, joined into documents, and counted."""

from pathlib import Path
from typing import List, Sequence


def read_test_sentences(path: Path, *, limit: int = 0) -> List[str]:
    """The sentences of a DNRTI file as raw text (tokens joined with normal English spacing).

    limit (int): Keep the first N sentences; 0 keeps all.
    """
    from spacy_secner.data import read_sentences
    from spacy_secner.detokenize import join_tokens

    texts = [join_tokens(words)[0] for words, _ in read_sentences(path)]
    return texts[:limit] if limit else texts


def make_documents(sentences: Sequence[str], n_docs: int) -> List[str]:
    """Consecutive sentences joined into `n_docs` documents whose sentence counts differ by at
    most one. DNRTI's sentences are shuffled, so these documents only have realistic lengths."""
    if not sentences:
        return []
    n_docs = max(1, min(n_docs, len(sentences)))
    size, extra = divmod(len(sentences), n_docs)
    docs, start = [], 0
    for i in range(n_docs):
        end = start + size + (i < extra)
        docs.append(" ".join(sentences[start:end]))
        start = end
    return docs


def count_words(texts: Sequence[str]) -> int:
    """Whitespace-separated words: one count for every system, so that ratios are fair."""
    return sum(len(text.split()) for text in texts)
