"""Entity-level evaluation with seqeval, and the plots the project writes."""
import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Sequence, Tuple, Union

from spacy.language import Language
from spacy.tokens import Doc
from spacy.training import Corpus

from .bio import entity_bounds
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


def plot_type_heatmap(report: Dict[str, Any], path: Union[str, Path]) -> None:
    """Per-type precision / recall / F1 as an annotated heatmap, with micro and macro rows."""
    plt = _pyplot()
    rows = {**report["per_type"], "micro avg": report["micro avg"], "macro avg": report["macro avg"]}
    columns = ("precision", "recall", "f1-score")
    values = [[rows[r][c] for c in columns] for r in rows]
    labels = [f"{r} ({rows[r]['support']})" for r in rows]
    fig, ax = plt.subplots(figsize=(6, 0.42 * len(rows) + 1.4))
    image = ax.imshow(values, cmap="RdYlGn", vmin=0.5, vmax=1.0, aspect="auto")
    _annotate(ax, values, fmt="{:.3f}")
    ax.set_xticks(range(len(columns)), ["precision", "recall", "F1"])
    ax.set_yticks(range(len(labels)), labels)
    ax.axhline(len(report["per_type"]) - 0.5, color="black", linewidth=1.5)
    ax.set_title(f"Test entities by type (seqeval), micro F1 {report['f1']:.4f}")
    fig.colorbar(image, ax=ax)
    _save(fig, path)


def plot_tag_confusion(
    gold: List[List[str]], pred: List[List[str]], tags: Sequence[str], path: Union[str, Path]
) -> None:
    """Token-level BIO tag confusion, rows normalised to the gold tag (counts in the cells)."""
    plt = _pyplot()
    index = {t: i for i, t in enumerate(tags)}
    counts = [[0] * len(tags) for _ in tags]
    for g_seq, p_seq in zip(gold, pred):
        for g, p in zip(g_seq, p_seq):
            counts[index[g]][index[p]] += 1
    rates = [[c / max(sum(row), 1) for c in row] for row in counts]
    fig, ax = plt.subplots(figsize=(0.42 * len(tags) + 3, 0.42 * len(tags) + 2))
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    _annotate(ax, counts, fmt="{}", skip_zero=True, small=True, shade=rates)
    ax.set_xticks(range(len(tags)), tags, rotation=90)
    ax.set_yticks(range(len(tags)), tags)
    ax.set_xlabel("predicted tag")
    ax.set_ylabel("gold tag")
    ax.set_title("BIO tag confusion on test (row-normalised colour, counts in cells)")
    fig.colorbar(image, ax=ax, fraction=0.04)
    _save(fig, path)


def read_curves(path: Union[str, Path]) -> List[Dict[str, Any]]:
    """The records written by `spacy-secner.curve_logger.v1`."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_curves(records: Iterable[Dict[str, Any]], path: Union[str, Path]) -> None:
    """Training loss, dev loss and dev F1 per evaluation, against epochs."""
    plt = _pyplot()
    records = [r for r in records if r["step"] > 0]
    if not records:
        raise ValueError("No evaluation after step 0 in the curves file: nothing to plot")
    # spaCy reports the epoch of the batch just taken: after one full pass it says 1.
    x = [r["epoch"] for r in records]
    fig, (ax_loss, ax_f1) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(x, [r["train_loss"] for r in records], "o-", label="training loss")
    if all("dev_loss" in r for r in records):
        ax_loss.plot(x, [r["dev_loss"] for r in records], "s-", label="dev loss")
    ax_loss.set_xlabel("epochs trained")
    ax_loss.set_ylabel("CRF negative log-likelihood per sentence")
    ax_loss.legend()
    ax_f1.plot(x, [r["ents_f"] for r in records], "o-", color="tab:green", label="dev F1")
    best = max(records, key=lambda r: r["score"])
    ax_f1.axhline(best["ents_f"], color="grey", linestyle=":")
    ax_f1.annotate(f"best {best['ents_f']:.4f}", (best["epoch"], best["ents_f"]),
                   textcoords="offset points", xytext=(0, -14), ha="center")
    ax_f1.set_xlabel("epochs trained")
    ax_f1.set_ylabel("dev entity F1")
    ax_f1.legend()
    fig.suptitle("Training curves (one point per evaluation)")
    _save(fig, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _annotate(ax, values, fmt: str, skip_zero: bool = False, small: bool = False, shade=None):
    shade = shade if shade is not None else values
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            if skip_zero and not value:
                continue
            color = "white" if shade[i][j] > 0.6 else "black"
            ax.text(j, i, fmt.format(value), ha="center", va="center", color=color,
                    fontsize=7 if small else 9)


def _save(fig, path: Union[str, Path]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=120)
    tmp.replace(path)
    fig.clear()


def raw_text_scores(
    nlp: Language,
    sentences: Iterable[Tuple[List[str], List[str]]],
    batch_size: int = 64,
    sentences_per_doc: int = 1,
) -> Dict[str, Any]:
    """Entity P/R/F1 when the pipeline reads raw text and tokenizes it itself.

    Each gold sentence is turned back into text (normal spacing, no space before punctuation);
    an entity counts as found when its character span and label match a gold one exactly.
    sentences_per_doc (int): Join this many consecutive sentences (with a space) into one text,
        to score whole documents rather than single sentences.
    """
    texts, gold = [], []
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
    found = [
        {(e.start_char, e.end_char, e.label_) for e in doc.ents}
        for doc in nlp.pipe(texts, batch_size=batch_size)
    ]
    tp = sum(len(g & f) for g, f in zip(gold, found))
    n_pred, n_gold = sum(map(len, found)), sum(map(len, gold))
    p, r = tp / max(n_pred, 1), tp / max(n_gold, 1)
    return {"precision": p, "recall": r, "f1": 2 * p * r / max(p + r, 1e-12),
            "true_positives": tp, "predicted": n_pred, "gold": n_gold}


def calibration(
    nlp: Language, path: Union[str, Path], n_bins: int = 10, batch_size: int = 64
) -> Dict[str, Any]:
    """How well `span._.confidence` predicts that an entity is right, on a gold DocBin.

    RETURNS (Dict[str, Any]): expected calibration error over `n_bins` equal-width bins, the
        precision among entities above 0.5 and 0.9 (and their share), and the reliability table.
    """
    examples = list(Corpus(str(path), gold_preproc=True)(nlp))
    pairs = []
    for eg, doc in zip(examples, nlp.pipe((eg.predicted for eg in examples), batch_size=batch_size)):
        gold = {(e.start, e.end, e.label_) for e in eg.reference.ents}
        pairs.extend((e._.confidence, (e.start, e.end, e.label_) in gold) for e in doc.ents)
    bins = []
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = [(c, ok) for c, ok in pairs if lo < c <= hi or (b == 0 and c == 0)]
        if inside:
            conf = sum(c for c, _ in inside) / len(inside)
            acc = sum(ok for _, ok in inside) / len(inside)
            bins.append({"low": lo, "high": hi, "count": len(inside), "confidence": conf, "precision": acc})
    ece = sum(b["count"] * abs(b["precision"] - b["confidence"]) for b in bins) / max(len(pairs), 1)

    def above(t: float) -> Dict[str, float]:
        kept = [ok for c, ok in pairs if c > t]
        return {"precision": sum(kept) / max(len(kept), 1), "share": len(kept) / max(len(pairs), 1)}

    return {"entities": len(pairs), "precision": sum(ok for _, ok in pairs) / max(len(pairs), 1),
            "ece": ece, "above_0.5": above(0.5), "above_0.9": above(0.9), "bins": bins}
