"""Plot the training curves written by spacy-secner.curve_logger.v1."""
from pathlib import Path

import typer

from spacy_secner.evaluation import read_curves
from spacy_secner.plots import plot_curves


def main(
    curves: Path = typer.Argument(
        ..., help="JSON-lines file of spacy-secner.curve_logger.v1 (training/curves.jsonl)"
    ),
    output: Path = typer.Argument(Path("metrics/curves.png"), help="Where the PNG goes"),
) -> None:
    """Plot training loss, dev loss and dev entity F1 per evaluation against epochs."""
    plot_curves(read_curves(curves), output)
    print(f"Wrote {output}")


if __name__ == "__main__":
    # A plain traceback: typer's pretty one prints every local variable of every frame.
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(main)
    app()
