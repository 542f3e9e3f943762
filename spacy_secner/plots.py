"""The figures the project writes: per-type scores, BIO confusion, training curves."""
from pathlib import Path
from typing import Any, Dict, Iterable, List, Sequence, Union

from .atomic import atomic_path
from .bio import bio_tags


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
    """Token-level BIO tag confusion, rows normalised to the gold tag (counts in the cells).

    tags (Sequence[str]): The rows and columns in order; the B- and I- tags of any other label
        found in `gold` or `pred` follow them, so a test label the model lacks shows as missed.
    """
    plt = _pyplot()
    tags = list(tags) + bio_tags(_labels_beyond(tags, gold, pred))[1:]
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


def _labels_beyond(tags: Sequence[str], *sequences: List[List[str]]) -> List[str]:
    """The labels, sorted, of the tags in `sequences` that are not in `tags`."""
    known = set(tags)
    return sorted({t[2:] for seqs in sequences for seq in seqs for t in seq if t not in known})


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
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    fig.clear()
