"""Write `spacy_secner/resources/tlds.txt`, the top-level domains `cti_iocs` accepts in a bare domain,
from a copy of the Public Suffix List (its ICANN section: the delegated TLDs).

    python scripts/update_tlds.py public_suffix_list.dat
"""

from pathlib import Path

import typer

OUT = Path(__file__).parent.parent / "spacy_secner" / "resources" / "tlds.txt"


def main(psl: Path = typer.Argument(..., exists=True, dir_okay=False)) -> None:
    tlds = set()
    version = "unknown"
    in_icann = False
    for line in psl.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("// VERSION:"):
            version = line.split(":", 1)[1].strip()
        elif line == "// ===BEGIN ICANN DOMAINS===":
            in_icann = True
        elif line == "// ===END ICANN DOMAINS===":
            in_icann = False
        elif in_icann and line and not line.startswith("//"):
            label = line.lstrip("*.!").rsplit(".", 1)[-1].lower()
            if label.isascii() and label.isalpha():  # the indicator patterns take ASCII TLDs
                tlds.add(label)
    header = (
        f"# ASCII top-level domains of the Public Suffix List (ICANN section), version {version}.\n"
    )
    OUT.write_text(header + "\n".join(sorted(tlds)) + "\n", encoding="utf-8")
    typer.echo(f"{len(tlds)} TLDs -> {OUT}")


if __name__ == "__main__":
    # A plain traceback: typer's pretty one prints every local variable of every frame.
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(main)
    app()
