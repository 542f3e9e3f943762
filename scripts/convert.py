"""Convert DNRTI's train/valid/test files into spaCy DocBins, one sentence per doc."""
import json
from pathlib import Path
import spacy
import typer
from spacy.tokens import DocBin
from wasabi import msg

from spacy_secner.atomic import atomic_path, write_json
from spacy_secner.data import DNRTIFormatError, dnrti_dir, read_docs

SPLITS = {"train": "train.txt", "dev": "valid.txt", "test": "test.txt"}


def main(
    output_dir: Path = typer.Argument(Path("corpus"), help="Where the .spacy files go"),
    directory: str = typer.Option(
        "",
        "--dnrti-dir",
        help="Directory with train.txt, valid.txt, test.txt (empty: $DNRTI_DIR, else assets/dnrti)",
    ),
    train_limit: int = typer.Option(0, help="Keep the first N training sentences (0: all)"),
    eval_limit: int = typer.Option(0, help="Keep the first N dev/test sentences (0: all)"),
) -> None:
    source = dnrti_dir(directory)
    missing = [name for name in SPLITS.values() if not (source / name).is_file()]
    if missing:
        raise typer.BadParameter(
            f"{source} lacks {', '.join(missing)}: set DNRTI_DIR to the DNRTI directory or run "
            "`spacy project assets` then `spacy project run extract`"
        )
    nlp = spacy.blank("en")
    read = {}
    for split, name in SPLITS.items():
        limit = train_limit if split == "train" else eval_limit
        try:
            read[split] = read_docs(source / name, nlp.vocab, limit=limit or None)
        except DNRTIFormatError as err:
            msg.fail(str(err), exits=1)
    # Write only once every file has been read: a bad file leaves the old corpus whole.
    report = {}
    for split, (docs, stats) in read.items():
        with atomic_path(output_dir / f"{split}.spacy") as tmp:
            DocBin(docs=docs, store_user_data=False).to_disk(tmp)
        report[split] = stats.as_dict()
        msg.info(f"{split}: {json.dumps(report[split])}")
    write_json(output_dir / "stats.json", report)


if __name__ == "__main__":
    # A plain traceback: typer's pretty one prints every local variable of every frame.
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(main)
    app()
