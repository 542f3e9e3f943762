"""The `secner` console script."""
import typer

from . import annotate

app = typer.Typer(
    help="Named-entity recognition for cyber-threat-intelligence text.",
    add_completion=False,
    no_args_is_help=True,
)


@app.callback()
def main() -> None:
    """Named-entity recognition for cyber-threat-intelligence text."""
    # A callback makes `annotate` a subcommand (`secner annotate`), listed by `secner --help`.


app.command(name="annotate")(annotate.annotate)

__all__ = ["app"]
