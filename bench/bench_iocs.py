"""Precision and recall of `cti_iocs` per indicator type on hand-labelled CTI sentences.

    python bench/bench_iocs.py [--data bench/data/iocs.jsonl] [--out benchmarks/iocs/iocs.json]

Each line of the data is {"text": ..., "iocs": [[span text, label, refanged value], ...]}; a
span is found by its first occurrence in the text. A prediction is right when its character
span and label equal a gold one; "value" counts the right spans whose `span._.ioc_value` is
the gold value. Where the `compare` extra is installed, the same sentences are also read by
iocextract (value level: its refanged values per sentence against the gold values of the types
it knows, compared loosely: no scheme, no port), and ioc-fanger refangs each gold defanged span,
beside our `refang`.
"""

import json
import re
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import spacy
import typer

from spacy_secner.iocs import IOC_LABELS, refang
from spacy_secner.tokenizer import build_cti_tokenizer

ROOT = Path(__file__).parent.parent
Gold = List[Tuple[int, int, str, str]]
# A span written in a defanged form: brackets around a dot, at sign or separator, hxxp, fxp.
DEFANGED = re.compile(r"[\[({]|(?i:hxxp|fxp)")


def read_data(path: Path) -> List[Tuple[str, Gold]]:
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        record = json.loads(line)
        gold = []
        for span, label, value in record["iocs"]:
            start = record["text"].find(span)
            if start < 0 or label not in IOC_LABELS:
                raise ValueError(f"{path}:{lineno}: {span!r} ({label}) is not in the text")
            gold.append((start, start + len(span), label, value))
        rows.append((record["text"], gold))
    return rows


def prf(tp: int, n_pred: int, n_gold: int) -> Dict[str, Optional[float]]:
    p = tp / n_pred if n_pred else None
    r = tp / n_gold if n_gold else None
    f = 2 * p * r / (p + r) if p and r else (0.0 if p is not None and r is not None else None)
    return {"precision": p, "recall": r, "f1": f, "support": n_gold, "predicted": n_pred}


def score_ours(rows: List[Tuple[str, Gold]]) -> Dict:
    nlp = spacy.blank("en")
    nlp.tokenizer = build_cti_tokenizer(nlp)
    nlp.add_pipe("cti_iocs")
    tp, n_pred, n_gold, values = Counter(), Counter(), Counter(), Counter()
    errors = []
    for (text, gold), doc in zip(rows, nlp.pipe(text for text, _ in rows)):
        pred = {(s.start_char, s.end_char, s.label_): s._.ioc_value for s in doc.spans["iocs"]}
        gold_spans = {(a, b, label): value for a, b, label, value in gold}
        for key, value in pred.items():
            n_pred[key[2]] += 1
            if key in gold_spans:
                tp[key[2]] += 1
                values[key[2]] += value == gold_spans[key]
            else:
                errors.append(
                    {"kind": "false positive", "text": text[key[0] : key[1]], "label": key[2]}
                )
        for key in gold_spans:
            n_gold[key[2]] += 1
            if key not in pred:
                errors.append({"kind": "missed", "text": text[key[0] : key[1]], "label": key[2]})
    per_type = {
        label: {**prf(tp[label], n_pred[label], n_gold[label]), "values_right": values[label]}
        for label in IOC_LABELS
        if n_pred[label] or n_gold[label]
    }
    total = prf(sum(tp.values()), sum(n_pred.values()), sum(n_gold.values()))
    return {
        "per_type": per_type,
        "micro": {**total, "values_right": sum(values.values())},
        "errors": errors,
    }


# iocextract's extractors and the labels of ours they stand for.
IOCEXTRACT_TYPES = {
    "url": "extract_urls",
    "ipv4": "extract_ipv4s",
    "ipv6": "extract_ipv6s",
    "email": "extract_emails",
    "md5": "extract_md5_hashes",
    "sha1": "extract_sha1_hashes",
    "sha256": "extract_sha256_hashes",
}


def _loose(label: str, value: str) -> str:
    """A value as both tools can give it: no scheme on URLs (iocextract adds http:// to bare
    ones), no port or prefix length on addresses (it drops them), lower case but URLs."""
    if label == "url":
        return re.sub(r"^[a-z]+://", "", value)
    if label == "ipv4":
        value = re.split(r"[:/]", value)[0]
    return value.lower()


def score_iocextract(rows: List[Tuple[str, Gold]]) -> Optional[Dict]:
    """Value-level P/R of iocextract (refang on) for the types it extracts, values compared
    loosely (`_loose`)."""
    try:
        import iocextract
    except ImportError:
        return None
    tp, n_pred, n_gold = Counter(), Counter(), Counter()
    for text, gold in rows:
        for label, func in IOCEXTRACT_TYPES.items():
            kwargs = {"refang": True} if label in ("url", "ipv4", "email") else {}
            if label == "url":
                kwargs["strip"] = True  # drop the punctuation after a URL
            found = {_loose(label, v) for v in getattr(iocextract, func)(text, **kwargs)}
            want = {_loose(label, value) for _, _, lab, value in gold if lab == label}
            tp[label] += len(found & want)
            n_pred[label] += len(found)
            n_gold[label] += len(want)
    per_type = {label: prf(tp[label], n_pred[label], n_gold[label]) for label in IOCEXTRACT_TYPES}
    return {
        "per_type": per_type,
        "micro": prf(sum(tp.values()), sum(n_pred.values()), sum(n_gold.values())),
    }


def compare_refang(rows: List[Tuple[str, Gold]]) -> Dict:
    """How many gold defanged spans each refanger turns into the gold value (case aside)."""
    defanged = [
        (text[a:b], value.lower())
        for text, gold in rows
        for a, b, _, value in gold
        if DEFANGED.search(text[a:b])
    ]
    result = {
        "defanged_spans": len(defanged),
        "ours": sum(refang(s).lower() == v for s, v in defanged),
    }
    try:
        from ioc_fanger import fang
    except ImportError:
        return result
    result["ioc_fanger"] = sum(fang(s).lower() == v for s, v in defanged)
    return result


def table(per_type: Dict, micro: Dict, *, values: bool) -> str:
    def fmt(x: Optional[float]) -> str:
        return "-" if x is None else f"{x:.3f}"

    head = "| type | support | predicted | P | R | F1 |" + (" values right |" if values else "")
    lines = [head, "|---" * (7 if values else 6) + "|"]
    for label, row in list(per_type.items()) + [("**all (micro)**", micro)]:
        cells = [label, str(row["support"]), str(row["predicted"])]
        cells += [fmt(row["precision"]), fmt(row["recall"]), fmt(row["f1"])]
        if values:
            cells.append(str(row["values_right"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(
    data: Path = typer.Option(ROOT / "bench" / "data" / "iocs.jsonl", exists=True, dir_okay=False),
    out: Optional[Path] = typer.Option(None, dir_okay=False, help="Write the figures as JSON"),
) -> None:
    rows = read_data(data)
    result = {
        "sentences": len(rows),
        "cti_iocs": score_ours(rows),
        "iocextract": score_iocextract(rows),
        "refang": compare_refang(rows),
    }
    ours = result["cti_iocs"]
    typer.echo(f"{len(rows)} sentences, {ours['micro']['support']} gold indicators\n")
    typer.echo(
        "cti_iocs (span and label exact):\n" + table(ours["per_type"], ours["micro"], values=True)
    )
    for error in ours["errors"]:
        typer.echo(f"  {error['kind']}: {error['text']!r} ({error['label']})")
    if result["iocextract"] is not None:
        other = result["iocextract"]
        typer.echo(
            "\niocextract (refanged values per sentence):\n"
            + table(other["per_type"], other["micro"], values=False)
        )
    typer.echo(f"\nrefanging the defanged gold spans: {json.dumps(result['refang'])}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    # A plain traceback: typer's pretty one prints every local variable of every frame.
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(main)
    app()
