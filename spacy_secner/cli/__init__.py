"""The `secner` console script."""
import typer

from . import annotate

app = typer.Typer(
    help="Named-entity recognition for cyber-threat-intelligence text.",
    add_completion=False,
    no_args_is_help=True,
    # A traceback must not print local variables: they hold report text, which would end up
    # in shared logs. Errors are one line anyway; `--debug` prints the plain traceback.
    pretty_exceptions_show_locals=False,
)


@app.callback()
def main() -> None:
    """Named-entity recognition for cyber-threat-intelligence text."""
    # A callback makes `annotate` a subcommand (`secner annotate`), listed by `secner --help`.


app.command(name="annotate")(annotate.annotate)

__all__ = ["app"]
