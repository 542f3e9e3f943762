"""Training helpers for spaCy's loop: a curve logger with dev loss, and a plateau schedule."""
import json
import math
import sys
from pathlib import Path
from typing import IO, Any, Callable, Dict, Iterator, List, Optional, Tuple

from spacy.language import Language
from spacy.util import registry

from .pipeline import CRFEntityRecognizer


class DevScores:
    """The dev scores of a training run, and the learning rate the schedule last gave.

    spaCy's loop hands no score to optimizer schedules, and a logger and a schedule are built
    separately from the config, so they share this record: `spacy-secner.curve_logger.v1` owns
    it (resets it when training starts, appends each evaluation's score) and
    `spacy-secner.plateau.v1` only reads the scores and writes back its rate.
    """

    def __init__(self) -> None:
        self.scores: List[float] = []
        self.learn_rate: Optional[float] = None

    def reset(self) -> None:
        self.scores = []
        self.learn_rate = None


# The one record of the training run in this process (spaCy trains one pipeline at a time).
dev_scores = DevScores()


@registry.schedules("spacy-secner.plateau.v1")
def plateau(
    base_rate: float, *, factor: float = 0.5, patience: int = 2, min_rate: float = 0.0
) -> Iterator[float]:
    """Learning rate that is multiplied by `factor` whenever the dev score has not improved
    for `patience` evaluations in a row (the count then starts again). Like PyTorch's
    ReduceLROnPlateau in mode "max", but one evaluation sooner: PyTorch waits for more than
    `patience` evaluations without improvement.

    Needs `spacy-secner.curve_logger.v1` as the training logger, which reports the scores.
    """
    rate, best, since_best, seen = base_rate, -math.inf, 0, 0
    while True:
        for score in dev_scores.scores[seen:]:
            seen += 1
            if score > best:
                best, since_best = score, 0
            else:
                since_best += 1
                if since_best >= patience:
                    rate, since_best = max(rate * factor, min_rate), 0
        dev_scores.learn_rate = rate
        yield rate


@registry.loggers("spacy-secner.curve_logger.v1")
def curve_logger(
    path: str,
    dev_path: Optional[str] = None,
    progress_bar: Optional[str] = "eval",
    console_output: bool = True,
) -> Callable[[Language, IO, IO], Tuple[Callable, Callable]]:
    """spaCy's console table and progress bar, plus one JSON line per evaluation in `path`.

    Each line holds epoch, step, seconds, words, the learning rate (when a plateau schedule
    runs), the mean training loss per sentence since the last evaluation, the mean CRF
    negative log-likelihood per dev sentence (`dev_loss`, when `dev_path` is given), and the
    dev entity precision, recall and F1.

    The dev loss is the `ner_crf` pipe's `{name}_loss` score, computed by spaCy's own
    evaluation on the docs it has just annotated: the dev set goes through the pipeline once
    per evaluation. `dev_path` only turns it on (it names the dev set of the config).
    """
    console = registry.loggers.get("spacy.ConsoleLogger.v3")(
        progress_bar=progress_bar, console_output=console_output, output_file=None
    )

    def setup(
        nlp: Language, stdout: IO = sys.stdout, stderr: IO = sys.stderr
    ) -> Tuple[Callable, Callable]:
        log_console, finalize_console = console(nlp, stdout, stderr)
        dev_scores.reset()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        file = out.open("w", encoding="utf8")
        last_step = -1

        def log_step(info: Optional[Dict[str, Any]]) -> None:
            nonlocal last_step
            log_console(info)
            if info is None or info.get("score") is None:
                return
            dev_scores.scores.append(info["score"])
            steps = info["step"] - last_step
            last_step = info["step"]
            other = info.get("other_scores") or {}
            record: Dict[str, Any] = {
                "epoch": info["epoch"],
                "step": info["step"],
                "seconds": info["seconds"],
                "words": info["words"],
                "learn_rate": dev_scores.learn_rate,
                "score": info["score"],
                "ents_p": other.get("ents_p"),
                "ents_r": other.get("ents_r"),
                "ents_f": other.get("ents_f"),
            }
            for name, proc in nlp.pipeline:
                if isinstance(proc, CRFEntityRecognizer):
                    record["train_loss"] = info["losses"].get(name, 0.0) / steps
                    if dev_path and f"{name}_loss" in other:
                        record["dev_loss"] = other[f"{name}_loss"]
            file.write(json.dumps(record) + "\n")
            file.flush()

        def finalize() -> None:
            finalize_console()
            file.close()

        return log_step, finalize

    return setup


@registry.callbacks("spacy-secner.torch_threads.v1")
def torch_threads(threads: int = 1) -> Callable[[Language], Language]:
    """An `[initialize.before_init]` callback that sets PyTorch's CPU thread count for training.

    On a busy 2-core machine, two intra-op threads make the BiLSTM's many small operations spin
    against each other: one thread trained 3.4x faster there (20 s vs 68 s for 20 steps).
    `[initialize]` callbacks run only when training, so a loaded pipeline is left alone.
    """

    def set_threads(nlp: Language) -> Language:
        import torch

        torch.set_num_threads(threads)
        return nlp

    return set_threads
