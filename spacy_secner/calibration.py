"""Calibrating `span._.confidence`: a monotone map from the CRF's span probability to the
probability that the entity is right, fitted on dev and stored in the `ner_crf` pipe's cfg.

The map is a plain dict, so it serializes with the pipe and applying it needs nothing beyond
the standard library and numpy:

- `{"method": "temperature", "t": T}`: sigmoid(logit(p) / T);
- `{"method": "platt", "a": A, "b": B}`: sigmoid(A * logit(p) + B) (A > 0);
- `{"method": "isotonic", "x": [...], "y": [...]}`: the non-decreasing step function of
  isotonic regression, interpolated linearly between its thresholds;
- `{"method": "by_name", "base": M, "known": {...}, "new": {...}, "names": {label: [...]}}`:
  one map of method M for entities whose text is a training entity of their label (`names`,
  keyed as `name_key` keys them) and one for the others. At the same span probability a name
  the model was trained on is right far more often than a new one (on DNRTI's dev set, above
  0.9: 94% against 54%), so one map for both leaves the new names, which analysts most want
  found, over-confident.

Fitting (`select_calibration`) needs scipy and scikit-learn (the `eval` extra).
"""

import math
import random
from typing import Any, Collection, Dict, List, Optional, Sequence, Tuple

import numpy

# (confidence, whether the entity is right) for each predicted entity.
Pairs = List[Tuple[float, bool]]
# An entity's text without whitespace, lower-cased, and its label (see `name_key`).
NameKey = Tuple[str, str]
METHODS = ("temperature", "platt", "isotonic")
BY_NAME = " by name"
# The candidates when the training entities' names are known, simplest first: a map per
# group doubles a method's parameters, and isotonic regression has a parameter per threshold.
CANDIDATES = (
    "temperature",
    "platt",
    "temperature" + BY_NAME,
    "platt" + BY_NAME,
    "isotonic",
    "isotonic" + BY_NAME,
)
# Below this many entities on dev, or without both right and wrong ones, no map is fitted (a
# map by name falls back to the map of all entities for a group below it).
MIN_PAIRS = 50
_EPS = 1e-6
# The frozen set of each `by_name` map's names, built once per map (keyed by the id of its
# names dict, which the entry holds so that the id cannot be reused).
_NAME_SETS: Dict[int, Tuple[Dict[str, List[str]], frozenset]] = {}


def name_key(text: str, label: str) -> NameKey:
    """An entity's text, lower-cased and without whitespace, and its label: the same mention
    whether DNRTI's tokens or the CTI tokenizer split it."""
    return "".join(text.split()).lower(), label


def needs_names(calibration: Optional[Dict[str, Any]]) -> bool:
    """Whether applying the map needs each entity's `name_key`."""
    return bool(calibration) and calibration.get("method") == "by_name"


def method_name(calibration: Dict[str, Any]) -> str:
    """A map's method as `select_calibration` names it (e.g. "platt by name")."""
    if calibration["method"] == "by_name":
        return calibration["base"] + BY_NAME
    return calibration["method"]


def summarize(calibration: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The map as logs and reports show it: a map by name with the count of its names."""
    if not needs_names(calibration):
        return calibration
    return dict(calibration, names=sum(map(len, calibration["names"].values())))  # type: ignore


def apply_calibration(
    calibration: Optional[Dict[str, Any]],
    confidences: List[List[float]],
    keys: Optional[List[List[NameKey]]] = None,
) -> List[List[float]]:
    """Each doc's entity confidences through the map (unchanged when `calibration` is None);
    `keys` (each entity's `name_key`, doc by doc) is needed by a map by name."""
    if not calibration:
        return confidences
    if keys is None:
        if needs_names(calibration):
            raise ValueError("A calibration map by name needs each entity's name key")
        return [[calibrate(calibration, c) for c in doc] for doc in confidences]
    return [
        [calibrate(calibration, c, key) for c, key in zip(doc, doc_keys)]
        for doc, doc_keys in zip(confidences, keys)
    ]


def calibrate(calibration: Dict[str, Any], p: float, key: Optional[NameKey] = None) -> float:
    """One confidence through the map (`key`: the entity's `name_key`, for a map by name)."""
    method = calibration["method"]
    if method == "by_name":
        if key is None:
            raise ValueError("A calibration map by name needs the entity's name key")
        group = "known" if tuple(key) in _name_set(calibration["names"]) else "new"
        return calibrate(calibration[group], p)
    if method == "isotonic":
        return float(numpy.interp(p, calibration["x"], calibration["y"]))
    z = _logit(p)
    if method == "temperature":
        return _sigmoid(z / calibration["t"])
    if method == "platt":
        return _sigmoid(calibration["a"] * z + calibration["b"])
    raise ValueError(
        f"Unknown calibration method {method!r}: expected one of {METHODS} or 'by_name'"
    )


def fit_calibration(
    pairs: Pairs,
    method: str,
    keys: Optional[Sequence[NameKey]] = None,
    names: Optional[Collection[NameKey]] = None,
) -> Dict[str, Any]:
    """Fit a map of the given method to (confidence, right) pairs, minimising the log loss
    (temperature, Platt) or the squared error under monotonicity (isotonic). A method ending
    in " by name" (e.g. "platt by name") fits one map to the pairs whose `keys` are among
    `names` (the training entities) and one to the others; a group with too few pairs, or
    with one class only, gets the map of all pairs."""
    if method.endswith(BY_NAME):
        if keys is None or names is None:
            raise ValueError(f"Fitting {method!r} needs each pair's name key and the names")
        base = method[: -len(BY_NAME)]
        names = {tuple(name) for name in names}
        known = [tuple(key) in names for key in keys]
        groups = {
            group: [pair for pair, k in zip(pairs, known) if k == (group == "known")]
            for group in ("known", "new")
        }
        everything = fit_calibration(pairs, base)
        by_label: Dict[str, List[str]] = {}
        for text, label in sorted(names):
            by_label.setdefault(label, []).append(text)
        return {
            "method": "by_name",
            "base": base,
            **{
                group: fit_calibration(grouped, base) if _fittable(grouped) else everything
                for group, grouped in groups.items()
            },
            "names": by_label,
        }
    p = numpy.asarray([c for c, _ in pairs], dtype="float64")
    y = numpy.asarray([ok for _, ok in pairs], dtype="float64")
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
        return {
            "method": "isotonic",
            "x": [float(v) for v in iso.X_thresholds_],
            "y": [float(v) for v in iso.y_thresholds_],
        }
    from scipy.optimize import minimize

    z = numpy.log(numpy.clip(p, _EPS, 1 - _EPS)) - numpy.log1p(-numpy.clip(p, _EPS, 1 - _EPS))

    def log_loss(logits: numpy.ndarray) -> float:
        # -[y log s(x) + (1 - y) log(1 - s(x))] = log(1 + e^x) - y x
        return float(numpy.mean(numpy.logaddexp(0.0, logits) - y * logits))

    if method == "temperature":
        # T = e^u keeps it positive, so the map stays increasing.
        result = minimize(lambda u: log_loss(z / math.exp(u[0])), x0=[0.0], method="Nelder-Mead")
        return {"method": "temperature", "t": math.exp(float(result.x[0]))}
    if method == "platt":
        result = minimize(
            lambda ab: log_loss(math.exp(ab[0]) * z + ab[1]), x0=[0.0, 0.0], method="Nelder-Mead"
        )
        return {"method": "platt", "a": math.exp(float(result.x[0])), "b": float(result.x[1])}
    raise ValueError(f"Unknown calibration method {method!r}: expected one of {CANDIDATES}")


def select_calibration(
    pairs: Pairs,
    *,
    keys: Optional[Sequence[NameKey]] = None,
    names: Optional[Collection[NameKey]] = None,
    methods: Optional[Sequence[str]] = None,
    n_bins: int = 10,
    folds: int = 5,
    tolerance: float = 0.005,
    seed: int = 0,
) -> Tuple[Optional[Dict[str, Any]], Dict[str, Any]]:
    """Choose a map by cross-validated ECE on the pairs, then fit it on all of them.

    Each method's cross-fitted confidences (see `cross_fitted`) are scored together; the
    simplest method (in `methods` order) within `tolerance` of the best ECE wins: a map with
    fewer parameters that calibrates as well overfits dev less. With the pairs' name `keys` and
    the training entities' `names`, the candidates are `CANDIDATES` (each method also by name)
    and the score is the ECE within known and within new names (`ece_by_name`): a map that is
    right on average but wrong on new names does not win.

    RETURNS (Tuple[Optional[Dict], Dict]): The fitted map (None when the pairs are too few or
        all right or all wrong), and the selection: the cross-fitted ECE per method, or why none.
    """
    if not _fittable(pairs):
        n_right = sum(ok for _, ok in pairs)
        reason = f"{len(pairs)} entities, {n_right} right: too few to fit a map (or one class)"
        return None, {"method": None, "reason": reason}
    by_name = keys is not None and names is not None
    if methods is None:
        methods = CANDIDATES if by_name else METHODS
    if by_name:
        names = {tuple(name) for name in names}  # type: ignore[union-attr]
    known = [tuple(key) in names for key in keys] if by_name else None  # type: ignore

    def score(held_out: Pairs) -> float:
        if known is None:
            return expected_calibration_error(held_out, n_bins=n_bins)
        return ece_by_name(held_out, known, n_bins=n_bins)["ece"]

    scores = {
        method: score(cross_fitted(pairs, method, keys=keys, names=names, folds=folds, seed=seed))
        for method in methods
    }
    best = min(scores.values())
    chosen = next(m for m in methods if scores[m] <= best + tolerance)
    return fit_calibration(pairs, chosen, keys, names), {
        "method": chosen,
        "score": "ECE within known and new names" if by_name else "ECE",
        "cv_ece": scores,
        "folds": folds,
        "tolerance": tolerance,
    }


def cross_fitted(
    pairs: Pairs,
    method: str,
    *,
    keys: Optional[Sequence[NameKey]] = None,
    names: Optional[Collection[NameKey]] = None,
    folds: int = 5,
    seed: int = 0,
) -> Pairs:
    """Each pair's confidence through a map fitted on the other folds: held-out calibrated
    confidences for every pair, to score a method on the data it is fitted on without
    scoring it on what it saw. A fold whose complement has one class only keeps its raw
    confidences."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    fold_of = {i: k % folds for k, i in enumerate(order)}
    result: Pairs = list(pairs)
    for k in range(folds):
        inside = [i for i in range(len(pairs)) if fold_of[i] != k]
        if len({pairs[i][1] for i in inside}) < 2:
            continue
        fitted = fit_calibration(
            [pairs[i] for i in inside],
            method,
            None if keys is None else [keys[i] for i in inside],
            names,
        )
        for i in range(len(pairs)):
            if fold_of[i] == k:
                key = None if keys is None else keys[i]
                result[i] = (calibrate(fitted, pairs[i][0], key), pairs[i][1])
    return result


def reliability(pairs: Pairs, n_bins: int = 10) -> Dict[str, Any]:
    """How well confidences predict that entities are right: expected calibration error over
    `n_bins` equal-width bins, the precision above 0.5 and 0.9 (and the share of entities
    there), and the reliability table (bins with entities only)."""
    bins = []
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = [(c, ok) for c, ok in pairs if lo < c <= hi or (b == 0 and c == 0)]
        if inside:
            conf = sum(c for c, _ in inside) / len(inside)
            acc = sum(ok for _, ok in inside) / len(inside)
            bins.append(
                {"low": lo, "high": hi, "count": len(inside), "confidence": conf, "precision": acc}
            )
    ece = sum(b["count"] * abs(b["precision"] - b["confidence"]) for b in bins) / max(len(pairs), 1)

    def above(t: float) -> Dict[str, float]:
        kept = [ok for c, ok in pairs if c > t]
        return {"precision": sum(kept) / max(len(kept), 1), "share": len(kept) / max(len(pairs), 1)}

    return {
        "entities": len(pairs),
        "precision": sum(ok for _, ok in pairs) / max(len(pairs), 1),
        "ece": ece,
        "above_0.5": above(0.5),
        "above_0.9": above(0.9),
        "bins": bins,
    }


def expected_calibration_error(pairs: Pairs, n_bins: int = 10) -> float:
    return reliability(pairs, n_bins)["ece"]


def ece_by_name(pairs: Pairs, known: Sequence[bool], n_bins: int = 10) -> Dict[str, Any]:
    """Calibration within known names and within new ones: the reliability of each group, and
    their ECEs weighted by their sizes (the ECE over `n_bins` bins per group)."""
    groups = {
        group: reliability(
            [pair for pair, k in zip(pairs, known) if k == (group == "known")], n_bins
        )
        for group in ("known", "new")
    }
    ece = sum(table["ece"] * table["entities"] for table in groups.values()) / max(len(pairs), 1)
    return {"ece": ece, **groups}


def plot_reliability(
    curves: Dict[str, Dict[str, Dict[str, Any]]], path, *, title: str = "Reliability"
) -> None:
    """One panel per split, each with a curve per stage (`{split: {stage: reliability}}`):
    precision against mean confidence per bin, and the diagonal of perfect calibration."""
    from .plots import _pyplot, _save

    plt = _pyplot()
    cols = min(len(curves), 2)
    rows = -(-len(curves) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.8 * rows), squeeze=False)
    for ax in axes.flat[len(curves) :]:
        ax.set_visible(False)
    for ax, (split, stages) in zip(axes.flat, curves.items()):
        ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
        for stage, table in stages.items():
            xs = [b["confidence"] for b in table["bins"]]
            ys = [b["precision"] for b in table["bins"]]
            ax.plot(xs, ys, "o-", label=f"{stage} (ECE {table['ece']:.3f})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("mean confidence in bin")
        ax.set_ylabel("precision in bin")
        ax.set_title(split, fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(title)
    _save(fig, path)


def _logit(p: float) -> float:
    p = min(max(p, _EPS), 1 - _EPS)
    return math.log(p) - math.log1p(-p)


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _fittable(pairs: Pairs) -> bool:
    """Enough pairs, right and wrong ones, to fit a map to."""
    n_right = sum(ok for _, ok in pairs)
    return len(pairs) >= MIN_PAIRS and 0 < n_right < len(pairs)


def _name_set(names: Dict[str, List[str]]) -> frozenset:
    """The `name_key`s of a map's names, built on first use."""
    entry = _NAME_SETS.get(id(names))
    if entry is None or entry[0] is not names:
        if len(_NAME_SETS) >= 8:  # maps fitted while selecting one come and go
            _NAME_SETS.clear()
        keys = frozenset((text, label) for label, texts in names.items() for text in texts)
        entry = (names, keys)
        _NAME_SETS[id(names)] = entry
    return entry[1]
