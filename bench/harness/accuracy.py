"""Accuracy harness: the headline config, the baselines and the ablations, one training each.

Every variant is the base config (`configs/minilm_cpu.cfg`) with one change, trained by
`spacy train` on the same corpus, encoder and budget, selected on dev, and scored once on test
with seqeval. `bench/bench_accuracy.py` drives it.
"""
import json
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

from thinc.api import Config

# spaCy's own transition-based NER on the same transformer, with the settings of spaCy's
# quickstart for transformer pipelines (mean pooling, hidden width 64).
SPACY_NER = {
    "factory": "ner",
    "incorrect_spans_key": None,
    "moves": None,
    "scorer": {"@scorers": "spacy.ner_scorer.v1"},
    "update_with_oracle_cut_size": 100,
    "model": {
        "@architectures": "spacy.TransitionBasedParser.v2",
        "state_type": "ner",
        "extra_state_tokens": False,
        "hidden_width": 64,
        "maxout_pieces": 2,
        "use_upper": False,
        "nO": None,
        "tok2vec": {
            "@architectures": "spacy-transformers.TransformerListener.v1",
            "grad_factor": 1.0,
            "pooling": {"@layers": "reduce_mean.v1"},
            "upstream": "*",
        },
    },
}


def _ner_model(config: Config) -> Dict[str, Any]:
    return config["components"]["ner_crf"]["model"]


def _spacy_ner(config: Config) -> None:
    del config["components"]["ner_crf"]
    config["components"]["ner"] = json.loads(json.dumps(SPACY_NER))
    config["nlp"]["pipeline"] = ["transformer", "ner"]


def _softmax(config: Config) -> None:
    model = _ner_model(config)
    config["components"]["ner_crf"]["model"] = {
        "@architectures": "spacy-secner.TransformerSoftmax.v1",
        "dropout": model["dropout"],
        "tok2vec": model["tok2vec"],
    }


def _set(**values: Any) -> Callable[[Config], None]:
    def change(config: Config) -> None:
        _ner_model(config).update(values)

    return change


def _mean_pooling(config: Config) -> None:
    _ner_model(config)["tok2vec"]["pooling"] = {"@layers": "reduce_mean.v1"}


def _averaged(config: Config) -> None:
    # thinc's Polyak averages of every weight: spaCy evaluates and saves with them.
    config["training"]["optimizer"]["use_averages"] = True


def _padded(config: Config) -> None:
    # The encoder reads its windows padded, as spacy-transformers does, in training and
    # prediction: the same model, with other rounding and dropout draws.
    config["components"]["transformer"]["model"]["packed_row_wordpieces"] = 0


def _mention_swap(config: Config) -> None:
    config["corpora"]["train"]["augmenter"] = {
        "@augmenters": "spacy-secner.mention_swap.v1",
        "path": "${paths.train}",
        "level": 0.3,
        "swap_prob": 0.5,
    }


@dataclass
class Variant:
    name: str
    kind: str  # "headline", "baseline", "ablation" or "lever"
    description: str
    change: Optional[Callable[[Config], None]] = None
    seeds: Sequence[int] = field(default_factory=lambda: (0,))

    def config(self, base: Config, seed: int, epochs: int = 0) -> Config:
        """The base config with this variant's change, `seed`, and a budget of `epochs` (0: the
        base's), counted in steps so that the last epoch ends with an evaluation (spaCy evaluates
        every eval_frequency steps and not at the end of training)."""
        config = Config(base).copy()
        if self.change is not None:
            self.change(config)
        config["system"]["seed"] = seed
        if epochs:
            config["training"]["max_steps"] = epochs * config["training"]["eval_frequency"]
            config["training"]["max_epochs"] = 0
        return config


VARIANTS: List[Variant] = [
    Variant("headline", "headline", "BiLSTM 256 + constrained CRF, first-piece pooling, no dropout",
            seeds=(0, 1, 2)),
    Variant("spacy-ner", "baseline", "(a) spaCy's transition-based `ner` on the same transformer",
            _spacy_ner),
    Variant("softmax", "baseline", "(b) linear softmax token classifier: no BiLSTM, no CRF",
            _softmax),
    Variant("dropout-0.1", "ablation", "headline with dropout 0.1 before the linear layer",
            _set(dropout=0.1)),
    Variant("unconstrained", "ablation", "headline with an unconstrained CRF (training and decoding)",
            _set(constrained=False)),
    Variant("no-bilstm", "ablation", "headline without the BiLSTM (linear -> CRF)", _set(depth=0)),
    Variant("mean-pooling", "ablation", "headline with mean instead of first-piece pooling",
            _mean_pooling),
    Variant("mention-swap", "lever", "headline + mention-swap augmentation (a copy of 30% of "
            "the sentences, each entity swapped with p 0.5)", _mention_swap),
    Variant("averaged", "lever", "headline evaluated and saved with the optimizer's moving "
            "average of the weights (`use_averages`)", _averaged),
    Variant("padded", "lever", "headline with the encoder's windows padded apart, not packed "
            "into rows (training and prediction)", _padded),
]


def variants_by_name(names: Sequence[str]) -> List[Variant]:
    known = {v.name: v for v in VARIANTS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"Unknown variants {unknown}; known: {sorted(known)}")
    return [known[n] for n in names] if names else list(VARIANTS)


def run_name(variant: Variant, seed: int) -> str:
    return f"{variant.name}-s{seed}"


def best_evaluation(curves: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The evaluation spaCy kept as model-best (highest score, the first of equals)."""
    best: Dict[str, Any] = {}
    for record in curves:
        if not best or record["score"] > best["score"]:
            best = record
    return best


def training_words_per_second(curves: List[Dict[str, Any]]) -> Optional[float]:
    """Training words per second of wall time over the whole run (its evaluations included),
    from the curve logger's last record: what the `minutes` of a run buy."""
    if not curves or not curves[-1].get("seconds"):
        return None
    return curves[-1]["words"] / curves[-1]["seconds"]


def closest_to_mean(results: List[Dict[str, Any]], variant: str) -> Dict[str, Any]:
    """The run of `variant` whose dev F1 is closest to the mean dev F1 over its seeds (the
    lower seed of equals): the run to ship, not the luckiest one, chosen without the test set,
    which only gives the figures reported: the mean and sample std of the test F1."""
    runs = sorted((r for r in results if r["variant"] == variant), key=lambda r: r["seed"])
    if not runs:
        raise ValueError(f"No run of variant {variant!r} in the results")
    mean_dev = statistics.mean(float(r["dev_f"]) for r in runs)
    chosen = min(runs, key=lambda r: abs(float(r["dev_f"]) - mean_dev))
    scores = [float(r["test_f"]) for r in runs]
    return {
        "run": chosen,
        "mean": statistics.mean(scores),
        "std": statistics.stdev(scores) if len(scores) > 1 else None,
        "mean_dev": mean_dev,
        "seeds": [r["seed"] for r in runs],
    }


# Figures that not every stored result holds.
OPTIONAL_FIGURES = ("train_words_per_s",)


def summarize(results: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Group run results by variant: mean and sample std over seeds of each figure."""
    by_variant: Dict[str, List[Dict[str, Any]]] = {}
    for result in results:
        by_variant.setdefault(result["variant"], []).append(result)
    summary = {}
    for name, runs in by_variant.items():
        row: Dict[str, Any] = {"variant": name, "kind": runs[0]["kind"], "seeds": [r["seed"] for r in runs]}
        keys = ["test_p", "test_r", "test_f", "dev_f", "train_minutes", "best_epoch", "epochs"]
        # Results written before a figure was recorded leave it out of their variant's row.
        keys += [k for k in OPTIONAL_FIGURES if all(r.get(k) is not None for r in runs)]
        for key in keys:
            values = [float(r[key]) for r in runs]
            row[key] = statistics.mean(values)
            row[key + "_std"] = statistics.stdev(values) if len(values) > 1 else None
        types = sorted({t for r in runs for t in r["per_type_f"]})
        row["per_type_f"] = {
            t: statistics.mean(r["per_type_f"].get(t, 0.0) for r in runs) for t in types
        }
        summary[name] = row
    return summary


def _pm(row: Dict[str, Any], key: str, digits: int = 4) -> str:
    std = row.get(key + "_std")
    value = f"{row[key]:.{digits}f}"
    return f"{value} ± {std:.{digits}f}" if std is not None else value


def render_markdown(summary: Dict[str, Any], order: Sequence[str]) -> str:
    """The side-by-side table: test P/R/F1, dev F1, epochs and minutes, then per-type test F1."""
    rows = [summary[n] for n in order if n in summary]
    lines = [
        "| variant | kind | seeds | test P | test R | test F1 | dev F1 | best epoch / run | minutes "
        "| training words/s |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['variant']} | {row['kind']} | {len(row['seeds'])} | {_pm(row, 'test_p')} "
            f"| {_pm(row, 'test_r')} | **{_pm(row, 'test_f')}** | {_pm(row, 'dev_f')} "
            f"| {row['best_epoch']:.1f} / {row['epochs']:.0f} | {_pm(row, 'train_minutes', 1)} "
            f"| {_pm(row, 'train_words_per_s', 0) if 'train_words_per_s' in row else '-'} |"
        )
    types = sorted({t for row in rows for t in row["per_type_f"]})
    lines += ["", "Test F1 per type (mean over seeds):", ""]
    lines.append("| type | " + " | ".join(row["variant"] for row in rows) + " |")
    lines.append("| --- |" + " ---: |" * len(rows))
    for t in types:
        cells = " | ".join(f"{row['per_type_f'].get(t, 0.0):.3f}" for row in rows)
        lines.append(f"| {t} | {cells} |")
    return "\n".join(lines) + "\n"
