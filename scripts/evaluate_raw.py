"""Score a pipeline on raw text (its own tokenizer) and the calibration of its confidences."""

from pathlib import Path

import spacy
import typer

from spacy.tokens import DocBin

from spacy_secner.atomic import write_json
from spacy_secner.evaluation import bio_of, calibration, raw_text_scores


def main(
    model: Path = typer.Argument(..., help="Trained pipeline directory or package name"),
    test: Path = typer.Argument(..., help="Test DocBin, turned back into raw text"),
    dev: Path = typer.Argument(..., help="Dev DocBin for calibration"),
    output_dir: Path = typer.Argument(Path("metrics")),
    gpu_id: int = typer.Option(-1, help="GPU to use, -1 for CPU"),
    sentences_per_doc: int = typer.Option(13, min=1, help="Sentences per document text"),
) -> None:
    if gpu_id >= 0:
        spacy.require_gpu(gpu_id)
    nlp = spacy.load(model)
    gold_docs = DocBin().from_disk(test).get_docs(nlp.vocab)
    sentences = [([t.text for t in doc], bio_of(doc)) for doc in gold_docs]
    raw = raw_text_scores(nlp, sentences)
    # The same text as ~13-sentence documents, like a report (DNRTI's sentences are shuffled,
    # so neighbours are unrelated: this measures robustness to length and context, no more).
    raw["documents"] = {
        "sentences_per_doc": sentences_per_doc,
        **raw_text_scores(nlp, sentences, sentences_per_doc=sentences_per_doc),
    }
    calib = calibration(nlp, dev)

    write_json(output_dir / "raw_text_test.json", raw)
    write_json(output_dir / "calibration_dev.json", calib)
    docs = raw["documents"]
    print(f"raw text test: P {raw['precision']:.4f} R {raw['recall']:.4f} F1 {raw['f1']:.4f}")
    print(f"raw text test as {sentences_per_doc}-sentence documents: P {docs['precision']:.4f} "
          f"R {docs['recall']:.4f} F1 {docs['f1']:.4f}")
    print(f"dev calibration: ECE {calib['ece']:.4f}, precision {calib['precision']:.4f}, "
          f"above 0.5 {calib['above_0.5']}, above 0.9 {calib['above_0.9']}")


if __name__ == "__main__":
    # A plain traceback: typer's pretty one prints every local variable of every frame.
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(main)
    app()
