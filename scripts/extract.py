"""Extract DNRTI's RAR archive with whichever extractor the system has."""
import shutil
import subprocess
import tempfile
from pathlib import Path

import typer

from spacy_secner.atomic import atomic_path

FILES = ("train.txt", "valid.txt", "test.txt")
# (program, arguments before the archive, option naming the output directory)
EXTRACTORS = (
    ("bsdtar", ["-xf"], "-C"),
    ("unrar", ["x", "-o+"], None),
    ("7z", ["x", "-y"], "-o"),
    ("unar", ["-f"], "-o"),
)
HINT = (
    "No RAR extractor found. On Debian/Ubuntu: `apt-get install libarchive-tools` (bsdtar); "
    "or set DNRTI_DIR to a directory that already holds train.txt, valid.txt and test.txt."
)


def main(
    archive: Path = typer.Argument(..., help="DNRTI's RAR archive (assets/DNRTI.rar)"),
    output_dir: Path = typer.Argument(
        ..., help="Where train.txt, valid.txt and test.txt go (assets/dnrti)"
    ),
) -> None:
    """Extract DNRTI's train.txt, valid.txt and test.txt from its RAR archive with the first
    extractor found of bsdtar, unrar, 7z and unar."""
    for program, args, out_opt in EXTRACTORS:
        exe = shutil.which(program)
        if exe is None:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            if out_opt == "-o" and program == "7z":
                cmd = [exe, *args, str(archive), f"-o{tmp}"]
            elif out_opt:
                cmd = [exe, *args, str(archive), out_opt, tmp]
            else:
                cmd = [exe, *args, str(archive), tmp + "/"]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            found = {p.name: p for p in Path(tmp).rglob("*.txt") if p.name in FILES}
            missing = [name for name in FILES if name not in found]
            if missing:
                raise typer.BadParameter(f"{archive} lacks {', '.join(missing)}")
            output_dir.mkdir(parents=True, exist_ok=True)
            for name, path in found.items():
                # The temporary directory may be on another file system: a move there can be a
                # copy, which a reader must never see half done.
                with atomic_path(output_dir / name) as tmp:
                    shutil.move(str(path), tmp)
        print(f"Extracted {', '.join(FILES)} to {output_dir} with {program}")
        return
    raise SystemExit(HINT)


if __name__ == "__main__":
    # A plain traceback: typer's pretty one prints every local variable of every frame.
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(main)
    app()
