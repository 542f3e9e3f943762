"""Score a trained pipeline on a DocBin with seqeval and draw the per-type and BIO heatmaps."""
from pathlib import Path

import spacy
import typer

from spacy_secner.atomic import write_json, write_text
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
    write_text(output_dir / f"seqeval_{name}.txt", report["report"])
    write_json(output_dir / f"seqeval_{name}.json", report)
    labels = nlp.get_pipe("ner_crf").labels
    plot_type_heatmap(report, output_dir / "heatmap.png")
    plot_tag_confusion(gold, pred, bio_tags(labels), output_dir / "confusion.png")
    print(report["report"])
    print(f"micro P {report['precision']:.4f} R {report['recall']:.4f} F1 {report['f1']:.4f}")


if __name__ == "__main__":
    # A plain traceback: typer's pretty one prints every local variable of every frame.
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(main)
    app()
