"""Seconds per dev evaluation during training: spaCy's evaluation of the dev set, plus, on code
whose curve logger still has `training.dev_loss`, that second pass for the dev loss.

Time two checkouts on the same model by putting each first on PYTHONPATH:

    PYTHONPATH=<checkout> python bench/bench_eval_cost.py training/model-best corpus/dev.spacy
"""
import statistics
import time
from pathlib import Path

import typer

app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)


@app.command()
def main(
    model: Path = typer.Argument(..., help="Trained pipeline directory"),
    dev: Path = typer.Argument(..., help="Dev DocBin"),
    repeats: int = typer.Option(2, min=1, help="Timed evaluations"),
    threads: int = typer.Option(1, min=1, help="torch threads (training uses 1)"),
) -> None:
    """Time `nlp.evaluate` on the dev set and, where the code has it, the dev-loss pass."""
    import spacy
    import torch
    from spacy.training import Corpus

    import spacy_secner
    from spacy_secner import training

    torch.set_num_threads(threads)
    nlp = spacy.load(model)
    examples = list(Corpus(str(dev), gold_preproc=True)(nlp))
    second_pass = getattr(training, "dev_loss", None)
    evaluate, loss = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        scores = nlp.evaluate(examples, batch_size=64)
        evaluate.append(time.perf_counter() - start)
        if second_pass is not None:
            start = time.perf_counter()
            second_pass(nlp, "ner_crf", str(dev))
            loss.append(time.perf_counter() - start)
    total = statistics.median(evaluate) + (statistics.median(loss) if loss else 0.0)
    print(f"code: {Path(spacy_secner.__file__).parent}")
    print(f"nlp.evaluate: {[round(t, 1) for t in evaluate]} s; dev-loss pass: "
          f"{[round(t, 1) for t in loss] or 'none (the loss is a score of the evaluation)'}; "
          f"ner_crf_loss among the scores: {'ner_crf_loss' in scores}")
    print(f"seconds per evaluation (medians): {total:.1f}")


if __name__ == "__main__":
    app()
