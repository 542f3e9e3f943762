"""Calibrating `span._.confidence`: a monotone map from the CRF's span probability to the
probability that the entity is right, fitted on dev and stored in the `ner_crf` pipe's cfg.

The map is a plain dict, so it serializes with the pipe and applying it needs nothing beyond
the standard library and numpy:

- `{"method": "temperature", "t": T}`: sigmoid(logit(p) / T);
- `{"method": "platt", "a": A, "b": B}`: sigmoid(A * logit(p) + B) (A > 0);
- `{"method": "isotonic", "x": [...], "y": [...]}`: the non-decreasing step function of
  isotonic regression, interpolated linearly between its thresholds.

Fitting (`select_calibration`) needs scipy and scikit-learn (the `eval` extra).
"""

import math
import random
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy

# (confidence, whether the entity is right) for each predicted entity.
Pairs = List[Tuple[float, bool]]
METHODS = ("temperature", "platt", "isotonic")
# Below this many entities on dev, or without both right and wrong ones, no map is fitted.
MIN_PAIRS = 50
_EPS = 1e-6


def apply_calibration(
    calibration: Optional[Dict[str, Any]], confidences: List[List[float]]
) -> List[List[float]]:
    """Each doc's entity confidences through the map (unchanged when `calibration` is None)."""
    if not calibration:
        return confidences
    return [[calibrate(calibration, c) for c in doc] for doc in confidences]


def calibrate(calibration: Dict[str, Any], p: float) -> float:
    """One confidence through the map."""
    method = calibration["method"]
    if method == "isotonic":
        return float(numpy.interp(p, calibration["x"], calibration["y"]))
    z = _logit(p)
    if method == "temperature":
        return _sigmoid(z / calibration["t"])
    if method == "platt":
        return _sigmoid(calibration["a"] * z + calibration["b"])
    raise ValueError(f"Unknown calibration method {method!r}: expected one of {METHODS}")


def fit_calibration(pairs: Pairs, method: str) -> Dict[str, Any]:
    """Fit a map of the given method to (confidence, right) pairs, minimising the log loss
    (temperature, Platt) or the squared error under monotonicity (isotonic)."""
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
    raise ValueError(f"Unknown calibration method {method!r}: expected one of {METHODS}")


def select_calibration(
    pairs: Pairs,
    *,
    methods: Sequence[str] = METHODS,
    n_bins: int = 10,
    folds: int = 5,
    tolerance: float = 0.005,
    seed: int = 0,
) -> Tuple[Optional[Dict[str, Any]], Dict[str, Any]]:
    """Choose a map by cross-validated ECE on the pairs, then fit it on all of them.

    Each method's cross-fitted confidences (see `cross_fitted`) are scored together; the
    simplest method (in `methods` order) within `tolerance` of the best ECE wins: a map with
    fewer parameters that calibrates as well overfits dev less.

    RETURNS (Tuple[Optional[Dict], Dict]): The fitted map (None when the pairs are too few or
        all right or all wrong), and the selection: the cross-fitted ECE per method, or why none.
    """
    n_right = sum(ok for _, ok in pairs)
    if len(pairs) < MIN_PAIRS or n_right in (0, len(pairs)):
        reason = f"{len(pairs)} entities, {n_right} right: too few to fit a map (or one class)"
        return None, {"method": None, "reason": reason}
    scores = {
        method: expected_calibration_error(
            cross_fitted(pairs, method, folds=folds, seed=seed), n_bins=n_bins
        )
        for method in methods
    }
    best = min(scores.values())
    chosen = next(m for m in methods if scores[m] <= best + tolerance)
    return fit_calibration(pairs, chosen), {
        "method": chosen,
        "cv_ece": scores,
        "folds": folds,
        "tolerance": tolerance,
    }


def cross_fitted(pairs: Pairs, method: str, *, folds: int = 5, seed: int = 0) -> Pairs:
    """Each pair's confidence through a map fitted on the other folds: held-out calibrated
    confidences for every pair, to score a method on the data it is fitted on without
    scoring it on what it saw. A fold whose complement has one class only keeps its raw
    confidences."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    fold_of = {i: k % folds for k, i in enumerate(order)}
    result: Pairs = list(pairs)
    for k in range(folds):
        train = [pairs[i] for i in range(len(pairs)) if fold_of[i] != k]
        if len({ok for _, ok in train}) < 2:
            continue
        fitted = fit_calibration(train, method)
        for i in range(len(pairs)):
            if fold_of[i] == k:
                result[i] = (calibrate(fitted, pairs[i][0]), pairs[i][1])
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
