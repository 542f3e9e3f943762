"""How faithfully spaCy's default English tokenizer and ours reproduce DNRTI's tokens.

Each sentence of a DNRTI file is joined back into raw text (`spacy_secner.detokenize`) and
tokenized again; see `spacy_secner.tokenizer.tokenization_fidelity` for the two shares.
"""

import json
from pathlib import Path
from typing import Optional

import spacy
import typer

from spacy_secner.data import dnrti_dir, read_sentences
from spacy_secner.tokenizer import build_cti_tokenizer, tokenization_fidelity



def main(
    path: Optional[Path] = typer.Argument(
        None,
        help="DNRTI file; default: test.txt of $DNRTI_DIR, else of assets/dnrti",
    ),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the JSON here"),
    n_examples: int = typer.Option(20, help="Most frequent mismatches to list per tokenizer"),
) -> None:
    """Print (and write) token and entity-boundary fidelity for both tokenizers."""
    if path is None:
        path = dnrti_dir() / "test.txt"
    sentences = list(read_sentences(path))
    default_nlp = spacy.blank("en")
    ours_nlp = spacy.blank("en")
    ours_nlp.tokenizer = build_cti_tokenizer(ours_nlp)
    results = {"path": str(path)}
    for name, nlp in (("default", default_nlp), ("cti_tokenizer", ours_nlp)):
        results[name] = tokenization_fidelity(nlp.tokenizer, sentences, n_examples=n_examples)
    for name in ("default", "cti_tokenizer"):
        r = results[name]
        typer.echo(
            f"{name:>13}: tokens exact {r['token_exact_share']:.4f} "
            f"({r['tokens_exact']}/{r['gold_tokens']}), entity boundaries on token edges "
            f"{r['boundary_share']:.4f} ({r['boundaries_on_token_edges']}/{r['entity_boundaries']})"
        )
    typer.echo(f"Mismatches of cti_tokenizer by kind: {results['cti_tokenizer']['mismatch_kinds']}")
    typer.echo("Top mismatches of cti_tokenizer (gold -> predicted):")
    for m in results["cti_tokenizer"]["top_mismatches"]:
        typer.echo(f"  {m['count']:4d}  {m['gold']!r} -> {m['predicted']}")
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(
            json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        typer.echo(f"Wrote {output}")


if __name__ == "__main__":
    # A plain traceback: typer's pretty one prints every local variable of every frame.
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(main)
    app()
