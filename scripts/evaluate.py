"""Score a trained pipeline on a DocBin with seqeval and draw the per-type and BIO heatmaps."""
from contextlib import ExitStack
from pathlib import Path

import spacy
import typer

from spacy_secner.atomic import atomic_path, write_json, write_text
from spacy_secner.bio import bio_tags
from spacy_secner.evaluation import predict_corpus, seqeval_report
from spacy_secner.plots import plot_tag_confusion, plot_type_heatmap


def main(
    model: Path = typer.Argument(..., help="Trained pipeline directory or package name"),
    corpus: Path = typer.Argument(..., help="DocBin with gold entities"),
    output_dir: Path = typer.Argument(Path("metrics"), help="Where reports and plots go"),
    name: str = typer.Option("test", help="Split name used in the output file names"),
    gpu_id: int = typer.Option(-1, help="GPU to use, -1 for CPU"),
) -> None:
    if gpu_id >= 0:
        spacy.require_gpu(gpu_id)
    nlp = spacy.load(model)
    gold, pred = predict_corpus(nlp, corpus)
    report = seqeval_report(gold, pred)
    labels = nlp.get_pipe("ner_crf").labels
    # Every output is written beside its final name first and renamed into place only when all
    # were written: a failure leaves the previous outputs as they were, not a mix of runs.
    outputs = [f"seqeval_{name}.txt", f"seqeval_{name}.json", "heatmap.png", "confusion.png"]
    with ExitStack() as stack:
        txt, json_, heatmap, confusion = (
            stack.enter_context(atomic_path(output_dir / out)) for out in outputs
        )
        write_text(txt, report["report"])
        write_json(json_, report)
        plot_type_heatmap(report, heatmap)
        # Gold labels the model lacks are appended to its tag set (and count as missed).
        plot_tag_confusion(gold, pred, bio_tags(labels), confusion)
    print(report["report"])
    print(f"micro P {report['precision']:.4f} R {report['recall']:.4f} F1 {report['f1']:.4f}")


if __name__ == "__main__":
    # A plain traceback: typer's pretty one prints every local variable of every frame.
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(main)
    app()
