"""The DNRTI reader on small hand-written files holding each quirk of the real ones."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import spacy
from spacy.tokens import DocBin

from spacy_secner.data import DNRTIFormatError, read_docs, read_sentences

ROOT = Path(__file__).parent.parent

# Each line is one quirk seen in DNRTI; CRLF endings are added when the file is written.
QUIRKY = [
    "The O",
    "admin@338 B-HackOrg",
    "used O",
    "Poison B-Tool",
    "Ivy I-Tool",
    ". O",
    "",
    "O",  # a tag with no token
    " O",  # a tag with no token, after a space
    "gang    B-HackOrg",  # several spaces before the tag
    "2012 B-Time    ",  # trailing spaces
    "skills. In O",  # a token holding a space, outside an entity
    "Lazarus Group B-HackOrg",  # a token holding a space, inside an entity
    "\bCTU B-SecTeam",  # a backspace before the token
    "Eset\u200d B-SecTeam",  # a zero-width joiner after it
    "I-Tool",  # a tag with no token
    "Korea–related O",  # non-ASCII kept
    "malware I-Tool",  # orphan I- after O: starts an entity, as in seqeval
    "   ",  # whitespace-only line: a sentence break
    "CVE-2012-0158 B-Exp",
    "exploit I-Exp",
    "Trend B-SecTeam",
    "Micro™ I-Time",  # I- of another type after B-: starts a new entity
]


def write(path: Path, lines) -> Path:
    path.write_bytes("\r\n".join(lines).encode("utf8"))
    return path


def test_quirks_are_handled_and_counted(tmp_path):
    path = write(tmp_path / "quirky.txt", QUIRKY)
    docs, stats = read_docs(path, spacy.blank("en").vocab)
    assert [len(d) for d in docs] == [6, 10, 4]
    first, second, third = docs
    assert [(e.text, e.label_) for e in first.ents] == [("admin@338", "HackOrg"), ("Poison Ivy", "Tool")]
    assert [t.text for t in second] == [
        "gang", "2012", "skills.", "In", "Lazarus", "Group", "CTU", "Eset", "Korea–related", "malware"
    ]
    ents = [(e.text, e.label_) for e in second.ents]
    assert ("Lazarus Group", "HackOrg") in ents  # the split token continues its entity
    assert ("CTU", "SecTeam") in ents and ("Eset", "SecTeam") in ents
    assert ("malware", "Tool") in ents  # orphan I- read as B-
    assert [(e.text, e.label_) for e in third.ents] == [
        ("CVE-2012-0158 exploit", "Exp"),
        ("Trend", "SecTeam"),
        ("Micro™", "Time"),
    ]
    assert all("\r" not in t.text and "\b" not in t.text and "\u200d" not in t.text
               for d in docs for t in d)
    assert stats.sentences == 3
    assert stats.tag_only_lines == 3
    assert stats.split_tokens == 2
    assert stats.stripped_chars == 2
    assert stats.repaired_tags == 2
    assert stats.non_ascii_tokens == 2
    assert stats.tokens == 20
    assert stats.entities == {"HackOrg": 3, "Tool": 2, "SecTeam": 3, "Time": 2, "Exp": 1}


def test_unknown_tag_names_file_and_line(tmp_path):
    path = write(tmp_path / "bad.txt", ["The O", "APT28 B-Hacker", ". O"])
    with pytest.raises(DNRTIFormatError, match=r"bad\.txt:2: unknown tag 'B-Hacker'"):
        list(read_sentences(path))


def test_token_without_tag_is_an_error(tmp_path):
    path = write(tmp_path / "bad.txt", ["The O", "APT28", ". O"])
    with pytest.raises(DNRTIFormatError, match=r"bad\.txt:2: unknown tag 'APT28'"):
        list(read_sentences(path))


def test_undecodable_bytes_name_the_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"The O\r\n\xe9t\xe9 O\r\n")
    with pytest.raises(DNRTIFormatError, match=r"latin1\.txt:2: not UTF-8"):
        list(read_sentences(path))


@pytest.mark.parametrize("newline", [b"\r\n", b"\n", b"\r"])
def test_undecodable_bytes_deep_in_a_file_name_their_own_line(tmp_path, newline):
    # Far past the first chunk a text stream decodes ahead of the line being read.
    path = tmp_path / "deep.txt"
    path.write_bytes(newline.join([b"tok O"] * 2000 + [b"caf\xe9 O", b"tok O"]))
    with pytest.raises(DNRTIFormatError, match=r"deep\.txt:2001: not UTF-8"):
        list(read_sentences(path))


def test_line_endings_and_bom_read_alike(tmp_path):
    lines = [b"APT28 B-HackOrg", b"struck O", b"", b"Sofacy B-HackOrg"]
    read = []
    layouts = [(b"", b"\n"), (b"", b"\r\n"), (b"", b"\r"), (b"\xef\xbb\xbf", b"\r\n")]
    for i, (prefix, newline) in enumerate(layouts):
        path = tmp_path / f"{i}.txt"
        path.write_bytes(prefix + newline.join(lines) + newline)
        read.append(list(read_sentences(path)))
    assert all(r == read[0] for r in read)
    assert read[0] == [(["APT28", "struck"], ["B-HackOrg", "O"]), (["Sofacy"], ["B-HackOrg"])]


@pytest.mark.parametrize("content", [b"", b"\r\n\r\n", b"   \r\n", b"O\r\n I-Tool\r\n"])
def test_a_file_without_sentences_is_an_error(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    with pytest.raises(DNRTIFormatError, match=r"empty\.txt: no sentences"):
        list(read_sentences(path))


@pytest.mark.parametrize(
    "line",
    [
        "APT28 B-HackOrg B-HackOrg",  # a tag column, then the gold column
        "APT28 O B-HackOrg",
        "APT28\tNNP\tB-HackOrg",  # tab-separated columns
        "APT28\tB-HackOrg\tO",
    ],
)
def test_more_than_two_columns_is_an_error(tmp_path, line):
    path = write(tmp_path / "cols.txt", ["The O", line, ". O"])
    with pytest.raises(DNRTIFormatError, match=r"cols\.txt:2: more than two columns"):
        list(read_sentences(path))


def test_a_token_with_spaces_is_not_an_extra_column(tmp_path):
    lines = ["Lazarus Group B-HackOrg", "skills. In O", "Lazarus\tB-HackOrg"]
    words, tags = zip(*read_sentences(write(tmp_path / "s.txt", lines)))
    assert words == (["Lazarus", "Group", "skills.", "In", "Lazarus"],)
    assert tags == (["B-HackOrg", "I-HackOrg", "O", "O", "B-HackOrg"],)


def test_limit_reports_only_kept_docs(tmp_path):
    path = write(tmp_path / "quirky.txt", QUIRKY)
    docs, stats = read_docs(path, spacy.blank("en").vocab, limit=1)
    assert len(docs) == stats.sentences == 1
    assert stats.entities == {"HackOrg": 1, "Tool": 1}


def test_doc_text_has_natural_spacing(tmp_path):
    path = write(tmp_path / "s.txt", ["APT28 B-HackOrg", "( O", "Sofacy B-HackOrg", ") O", "struck O", ". O"])
    (doc,), _ = read_docs(path, spacy.blank("en").vocab)
    assert doc.text == "APT28 (Sofacy) struck."


def test_convert_script_writes_docbins_and_fails_cleanly(tmp_path):
    data = tmp_path / "dnrti"
    data.mkdir()
    for name in ("train.txt", "valid.txt", "test.txt"):
        write(data / name, QUIRKY)
    out = tmp_path / "corpus"
    cmd = [sys.executable, str(ROOT / "scripts" / "convert.py"), str(out), "--dnrti-dir", str(data)]
    subprocess.run(cmd, check=True, capture_output=True)
    docs = list(DocBin().from_disk(out / "train.spacy").get_docs(spacy.blank("en").vocab))
    assert len(docs) == 3 and len(docs[0].ents) == 2
    assert (out / "stats.json").exists()

    write(data / "test.txt", ["APT28 B-Nope"])
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode != 0
    output = " ".join((result.stdout + result.stderr).split())  # wasabi wraps long lines
    assert "test.txt:1: unknown tag 'B-Nope'" in output
    assert "Traceback" not in output
    # The earlier files are intact: nothing half-written.
    assert len(list(DocBin().from_disk(out / "test.spacy").get_docs(spacy.blank("en").vocab))) == 3


def test_convert_script_rejects_an_empty_file(tmp_path):
    data = tmp_path / "dnrti"
    data.mkdir()
    for name in ("train.txt", "valid.txt"):
        write(data / name, QUIRKY)
    (data / "test.txt").write_bytes(b"\r\n")
    out = tmp_path / "corpus"
    cmd = [sys.executable, str(ROOT / "scripts" / "convert.py"), str(out), "--dnrti-dir", str(data)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode != 0
    output = " ".join((result.stdout + result.stderr).split())
    assert "test.txt: no sentences" in output
    assert "Traceback" not in output
    assert not out.exists() or not any(out.iterdir())


def test_extract_script_has_help_and_moves_every_file_into_place(tmp_path):
    env = {**os.environ, "COLUMNS": "300", "NO_COLOR": "1"}
    script = str(ROOT / "scripts" / "extract.py")
    shown = subprocess.run([sys.executable, script, "--help"], env=env, capture_output=True,
                           text=True, check=True).stdout
    assert "Extract DNRTI's train.txt, valid.txt and test.txt" in shown
    assert "DNRTI's RAR archive" in shown and "Where train.txt, valid.txt and test.txt go" in shown
    # A stand-in bsdtar: `bsdtar -xf ARCHIVE -C DIR` writes the three files into DIR.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "bsdtar"
    fake.write_text(
        f"#!{sys.executable}\nimport sys, pathlib\nout = pathlib.Path(sys.argv[-1]) / 'DNRTI'\n"
        "out.mkdir()\nfor n in ('train', 'valid', 'test'): (out / f'{n}.txt').write_text(n)\n"
    )
    fake.chmod(0o755)
    out = tmp_path / "dnrti"
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    subprocess.run([sys.executable, script, str(tmp_path / "x.rar"), str(out)], env=env,
                   check=True, capture_output=True)
    assert sorted(p.name for p in out.iterdir()) == ["test.txt", "train.txt", "valid.txt"]
    assert (out / "valid.txt").read_text() == "valid"
