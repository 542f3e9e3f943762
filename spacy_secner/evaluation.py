"""Entity-level evaluation: seqeval scores, raw-text scores, confidence calibration."""
import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, NamedTuple, Set, Tuple, Union

from spacy.language import Language
from spacy.tokens import Doc, DocBin, Span
from spacy.training import Corpus

from .bio import entity_bounds
from .calibration import name_key
from .detokenize import join_tokens, token_offsets


def bio_of(doc: Doc) -> List[str]:
    """The doc's entities as BIO tags, one per token."""
    return [f"{t.ent_iob_}-{t.ent_type_}" if t.ent_iob_ in ("B", "I") else "O" for t in doc]


def predict_corpus(
    nlp: Language, path: Union[str, Path], batch_size: int = 64
) -> Tuple[List[List[str]], List[List[str]]]:
    """Gold and predicted BIO tags for every doc of a DocBin, on the corpus's own tokens."""
    examples = list(Corpus(str(path), gold_preproc=True)(nlp))
    predicted = nlp.pipe((eg.predicted for eg in examples), batch_size=batch_size)
    gold = [bio_of(eg.reference) for eg in examples]
    return gold, [bio_of(doc) for doc in predicted]


def seqeval_report(gold: List[List[str]], pred: List[List[str]]) -> Dict[str, Any]:
    """seqeval's entity-level report, default (CoNLL) mode, as the reference and the
    published DNRTI results use it.

    RETURNS (Dict[str, Any]): micro `precision`, `recall`, `f1` and `support` at the top level,
        `per_type` scores, `macro avg`, `weighted avg`, and the text `report`.
    """
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    table = classification_report(gold, pred, digits=4, output_dict=True, zero_division=0)
    averages = {k: table.pop(k) for k in ("micro avg", "macro avg", "weighted avg")}
    return {
        "precision": float(precision_score(gold, pred, zero_division=0)),
        "recall": float(recall_score(gold, pred, zero_division=0)),
        "f1": float(f1_score(gold, pred, zero_division=0)),
        "support": int(averages["micro avg"]["support"]),
        "per_type": {label: _floats(scores) for label, scores in table.items()},
        **{name: _floats(scores) for name, scores in averages.items()},
        "report": classification_report(gold, pred, digits=4, zero_division=0),
    }


def _floats(scores: Dict[str, Any]) -> Dict[str, float]:
    return {k: (int(v) if k == "support" else float(v)) for k, v in scores.items()}


def read_curves(path: Union[str, Path]) -> List[Dict[str, Any]]:
    """The records written by `spacy-secner.curve_logger.v1`."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def raw_text_documents(
    sentences: Iterable[Tuple[List[str], List[str]]], sentences_per_doc: int = 1
) -> Tuple[List[str], List[Set[Tuple[int, int, str]]]]:
    """Gold sentences turned back into text (normal spacing, no space before punctuation),
    `sentences_per_doc` of them joined with a space into one text, and each text's gold
    entities as (start_char, end_char, label)."""
    texts: List[str] = []
    gold: List[Set[Tuple[int, int, str]]] = []
    for i, (words, tags) in enumerate(sentences):
        text, spaces = join_tokens(words)
        offsets = token_offsets(words, spaces)
        ents = {(offsets[s][0], offsets[e - 1][1], tags[s][2:]) for s, e in entity_bounds(tags)}
        if i % sentences_per_doc and texts:
            shift = len(texts[-1]) + 1
            texts[-1] += " " + text
            gold[-1] |= {(start + shift, end + shift, label) for start, end, label in ents}
        else:
            texts.append(text)
            gold.append(ents)
    return texts, gold


def raw_text_scores(
    nlp: Language,
    sentences: Iterable[Tuple[List[str], List[str]]],
    batch_size: int = 64,
    sentences_per_doc: int = 1,
) -> Dict[str, Any]:
    """Entity P/R/F1 when the pipeline reads raw text and tokenizes it itself.

    Each gold sentence is turned back into text (see `raw_text_documents`); an entity counts as
    found when its character span and label match a gold one exactly.
    sentences_per_doc (int): Join this many consecutive sentences (with a space) into one text,
        to score whole documents rather than single sentences.
    """
    texts, gold = raw_text_documents(sentences, sentences_per_doc)
    found = [
        {(e.start_char, e.end_char, e.label_) for e in doc.ents}
        for doc in nlp.pipe(texts, batch_size=batch_size)
    ]
    tp = sum(len(g & f) for g, f in zip(gold, found))
    n_pred, n_gold = sum(map(len, found)), sum(map(len, gold))
    p, r = tp / max(n_pred, 1), tp / max(n_gold, 1)
    return {"precision": p, "recall": r, "f1": 2 * p * r / max(p + r, 1e-12),
            "true_positives": tp, "predicted": n_pred, "gold": n_gold}


class PredictedEntity(NamedTuple):
    """A predicted entity: the index of its text, its `entity_key`, its confidence, and whether
    it is right (a gold entity's characters, or tokens, and label)."""

    text: int
    key: Tuple[str, str]
    confidence: float
    right: bool


def gold_confidence_pairs(
    nlp: Language, path: Union[str, Path], batch_size: int = 64
) -> List[Tuple[float, bool]]:
    """(span._.confidence, right) for each entity predicted on a gold DocBin's own tokens;
    right = same tokens and label as a gold entity. Entities without a confidence are left out."""
    return confidence_pairs(gold_entities(nlp, path, batch_size))


def gold_entities(
    nlp: Language, path: Union[str, Path], batch_size: int = 64
) -> List[PredictedEntity]:
    """Each entity with a confidence that the pipeline predicts on a gold DocBin's own tokens
    (the index of its doc, its `entity_key`, confidence and whether it is right: the same tokens
    and label as a gold entity)."""
    examples = list(Corpus(str(path), gold_preproc=True)(nlp))
    docs = nlp.pipe((eg.predicted for eg in examples), batch_size=batch_size)
    found = []
    for i, (eg, doc) in enumerate(zip(examples, docs)):
        gold = {(e.start, e.end, e.label_) for e in eg.reference.ents}
        found.extend(
            PredictedEntity(i, entity_key(e), e._.confidence, (e.start, e.end, e.label_) in gold)
            for e in doc.ents
            if e._.confidence is not None
        )
    return found


def raw_text_entities(
    nlp: Language,
    sentences: Iterable[Tuple[List[str], List[str]]],
    batch_size: int = 64,
    sentences_per_doc: int = 1,
) -> List[PredictedEntity]:
    """Each entity with a confidence that the pipeline predicts on the sentences as raw text, as a
    user runs it (texts as in `raw_text_scores`): one pass, which callers can split by text or
    entity without predicting again."""
    texts, gold = raw_text_documents(sentences, sentences_per_doc)
    return [
        PredictedEntity(
            i, entity_key(e), e._.confidence, (e.start_char, e.end_char, e.label_) in ents
        )
        for i, (doc, ents) in enumerate(zip(nlp.pipe(texts, batch_size=batch_size), gold))
        for e in doc.ents
        if e._.confidence is not None
    ]


def raw_text_confidence_pairs(
    nlp: Language,
    sentences: Iterable[Tuple[List[str], List[str]]],
    batch_size: int = 64,
    sentences_per_doc: int = 1,
) -> List[Tuple[float, bool]]:
    """(span._.confidence, right) for each entity predicted on raw text (see
    `raw_text_entities`)."""
    return confidence_pairs(raw_text_entities(nlp, sentences, batch_size, sentences_per_doc))


def confidence_pairs(entities: Iterable[PredictedEntity]) -> List[Tuple[float, bool]]:
    """(confidence, right) of each entity, as calibration reads them."""
    return [(e.confidence, e.right) for e in entities]


def entity_key(span: Span) -> Tuple[str, str]:
    """An entity's `name_key`: its text, lower-cased and without whitespace, and its label."""
    return name_key(span.text, span.label_)


def known_entities(nlp: Language, path: Union[str, Path]) -> Set[Tuple[str, str]]:
    """`entity_key` of every gold entity of a DocBin (e.g. the training set)."""
    docs = DocBin().from_disk(path).get_docs(nlp.vocab)
    return {entity_key(e) for doc in docs for e in doc.ents}


def calibration(
    nlp: Language, path: Union[str, Path], n_bins: int = 10, batch_size: int = 64
) -> Dict[str, Any]:
    """How well `span._.confidence` predicts that an entity is right, on a gold DocBin.

    RETURNS (Dict[str, Any]): expected calibration error over `n_bins` equal-width bins, the
        precision among entities above 0.5 and 0.9 (and their share), and the reliability table.
    """
    from .calibration import reliability

    return reliability(gold_confidence_pairs(nlp, path, batch_size=batch_size), n_bins)
