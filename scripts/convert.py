"""Convert DNRTI's train/valid/test files into spaCy DocBins, one sentence per doc."""
import json
import os
from pathlib import Path
import spacy
import typer
from spacy.tokens import DocBin
from wasabi import msg

from spacy_secner.data import DNRTIFormatError, read_docs

SPLITS = {"train": "train.txt", "dev": "valid.txt", "test": "test.txt"}


def main(
    output_dir: Path = typer.Argument(Path("corpus"), help="Where the .spacy files go"),
    dnrti_dir: str = typer.Option(
        "", help="Directory with train.txt, valid.txt, test.txt (empty: $DNRTI_DIR)"
    ),
    fallback_dir: Path = typer.Option(
        Path("assets/dnrti"), help="Used when neither the argument nor $DNRTI_DIR is set"
    ),
    train_limit: int = typer.Option(0, help="Keep the first N training sentences (0: all)"),
    eval_limit: int = typer.Option(0, help="Keep the first N dev/test sentences (0: all)"),
) -> None:
    source = Path(dnrti_dir or os.environ.get("DNRTI_DIR") or fallback_dir)
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
    output_dir.mkdir(parents=True, exist_ok=True)
    report = {}
    for split, (docs, stats) in read.items():
        target = output_dir / f"{split}.spacy"
        tmp = target.with_suffix(".spacy.tmp")
        DocBin(docs=docs, store_user_data=False).to_disk(tmp)
        tmp.replace(target)
        report[split] = stats.as_dict()
        msg.info(f"{split}: {json.dumps(report[split])}")
    (output_dir / "stats.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    typer.run(main)
