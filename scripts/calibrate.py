"""Fit the confidence calibration map on dev, store it in a copy of the pipeline, and report the
reliability before and after on dev and on the test set's raw text."""

import json
from contextlib import ExitStack
from pathlib import Path
from typing import List, Optional, Set, Tuple

import spacy
import typer
from spacy.tokens import DocBin

from spacy_secner.atomic import atomic_directory, atomic_path, write_json
from spacy_secner.calibration import (
    calibrate,
    cross_fitted,
    ece_by_name,
    plot_reliability,
    reliability,
    select_calibration,
    summarize,
)
from spacy_secner.evaluation import (
    bio_of,
    confidence_pairs,
    gold_entities,
    known_entities,
    raw_text_entities,
)


def main(
    model: Path = typer.Argument(..., help="Trained pipeline directory (read only)"),
    dev: Path = typer.Argument(..., help="Dev DocBin: the map is fitted here"),
    test: Path = typer.Argument(..., help="Test DocBin, read as raw text to report only"),
    output: Path = typer.Argument(..., help="Where the calibrated pipeline is written"),
    metrics_dir: Path = typer.Argument(Path("metrics")),
    gpu_id: int = typer.Option(-1, help="GPU to use, -1 for CPU"),
    sentences_per_doc: int = typer.Option(13, min=1, help="Sentences per test document text"),
    train: Optional[Path] = typer.Option(
        None,
        help="Training DocBin: its entities' names let the map tell known names from new ones "
        "(the candidates then include maps by name), and the dev and test sentences that are not "
        "in it and the entities that are not among its entities are reported on their own",
    ),
    by_name: bool = typer.Option(
        True,
        help="With --train, also consider maps by name (known and new names apart), chosen by the "
        "ECE within known and new names; --no-by-name keeps one map for all entities, chosen by "
        "the plain ECE (the groups are still reported)",
    ),
    fit_on: str = typer.Option(
        "tokens",
        help="Fit on dev with DNRTI's own tokens ('tokens') or on the dev sentences as raw text "
        "through the whole pipeline ('raw')",
    ),
) -> None:
    if fit_on not in ("raw", "tokens"):
        raise typer.BadParameter(f"--fit-on must be 'raw' or 'tokens', not {fit_on!r}")
    # Both output folders exist before the minutes of predictions that fill them.
    output.parent.mkdir(parents=True, exist_ok=True)
    metrics_dir.mkdir(parents=True, exist_ok=True)
    if gpu_id >= 0:
        spacy.require_gpu(gpu_id)
    nlp = spacy.load(model)
    pipe = nlp.get_pipe("ner_crf")
    pipe.cfg.pop("calibration", None)  # fit on the CRF's own probabilities
    found = {"dev": gold_entities(nlp, dev)}
    # Users bring raw text, which the CTI tokenizer splits a little differently from DNRTI's
    # tokens: the same dev sentences as raw text are reported too, and can be the fit set.
    dev_sentences, test_sentences = sentences_of(nlp, dev), sentences_of(nlp, test)
    # One prediction pass per split and layout; the splits below are subsets of them.
    found["dev (raw text)"] = raw_text_entities(nlp, dev_sentences)
    found["test (raw text)"] = raw_text_entities(nlp, test_sentences)
    found[f"test (raw text, {sentences_per_doc}-sentence documents)"] = raw_text_entities(
        nlp, test_sentences, sentences_per_doc=sentences_per_doc
    )
    fit_split = "dev (raw text)" if fit_on == "raw" else "dev"
    known: Optional[Set[Tuple[str, str]]] = None
    if train is not None:
        # Half of DNRTI's dev and test sentences also occur in train.txt; new text is what
        # a user brings.
        seen = {tuple(words) for words, _ in sentences_of(nlp, train)}
        # Entities whose text never is a training entity of that type: the new names an
        # analyst most wants found, wherever the sentence comes from. They are also what a map
        # by name tells apart.
        known = known_entities(nlp, train)
        for split, sentences in (("dev", dev_sentences), ("test", test_sentences)):
            new = {i for i, (words, _) in enumerate(sentences) if tuple(words) not in seen}
            everything = found[f"{split} (raw text)"]
            found[f"{split} (raw text, {len(new)} sentences not in train)"] = [
                e for e in everything if e.text in new
            ]
            found[f"{split} (raw text, entities not in train)"] = [
                e for e in everything if e.key not in known
            ]
    fit_pairs = confidence_pairs(found[fit_split])
    fit_keys = [e.key for e in found[fit_split]]
    use_names = known is not None and by_name
    fitted, selection = select_calibration(
        fit_pairs, keys=fit_keys if use_names else None, names=known if use_names else None
    )
    results = {"map": fitted, "selection": selection, "fit_on": fit_split, "splits": {}}
    curves = {}
    for split, entities in found.items():
        pairs = confidence_pairs(entities)
        keys = [e.key for e in entities]
        stage_pairs = {"before": pairs}
        if fitted is not None:
            stage_pairs["after"] = [
                (calibrate(fitted, c, key), ok) for (c, ok), key in zip(pairs, keys)
            ]
            if split == fit_split:
                # The map was fitted on these pairs: their held-out view is each one calibrated
                # by a map fitted on the other folds.
                stage_pairs["after, cross-fitted"] = cross_fitted(
                    pairs, selection["method"], keys=keys, names=known
                )
        else:
            stage_pairs["after"] = pairs
        stages = {stage: reliability(staged) for stage, staged in stage_pairs.items()}
        if known is not None:
            # Calibration within known and within new names: what a map by name is chosen on.
            is_known = [key in known for key in keys]
            for stage, staged in stage_pairs.items():
                stages[stage]["by_name"] = ece_by_name(staged, is_known)
        results["splits"][split] = stages
        curves[split] = stages
        print(
            f"{split}: {stages['before']['entities']} entities, ECE "
            + " -> ".join(f"{table['ece']:.4f} ({stage})" for stage, table in stages.items())
            + (
                "; within known and new names "
                + " -> ".join(f"{table['by_name']['ece']:.4f}" for table in stages.values())
                if known is not None
                else ""
            )
        )
    print(f"map: {json.dumps(summarize(fitted))} ({selection})")
    if fitted is not None:
        pipe.cfg["calibration"] = fitted
    method = selection["method"] or "none"
    # Every output is written beside its final name first and put in place only when all were
    # written, the pipeline last: a failure leaves the previous outputs as they were.
    with ExitStack() as stack:
        model_tmp = stack.enter_context(atomic_directory(output))
        json_tmp = stack.enter_context(atomic_path(metrics_dir / "calibration.json"))
        plot_tmp = stack.enter_context(atomic_path(metrics_dir / "reliability.png"))
        write_json(json_tmp, results)
        plot_reliability(
            {split: stages for split, stages in curves.items() if "documents" not in split},
            plot_tmp,
            title=f"Entity confidence reliability, 10 bins (map: {method}, fitted on {fit_split})",
        )
        nlp.to_disk(model_tmp)


def sentences_of(nlp, path: Path) -> List[Tuple[List[str], List[str]]]:
    """(words, BIO tags) of each doc of a gold DocBin."""
    return [
        ([t.text for t in doc], bio_of(doc)) for doc in DocBin().from_disk(path).get_docs(nlp.vocab)
    ]


if __name__ == "__main__":
    # A plain traceback: typer's pretty one prints every local variable of every frame.
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(main)
    app()
