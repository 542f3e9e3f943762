"""The threat-report tokenizer: indicators stay whole, punctuation still comes off, and the
tokenizer survives `to_disk` -> `spacy.load`, in this process and in a fresh one."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import spacy
from spacy.tokenizer import Tokenizer

from spacy_secner.tokenizer import (
    FILE_EXTENSION_TLDS,
    indicator_regex,
    tokenization_fidelity,
    top_level_domains,
)

TOKENIZER_NAME = "spacy-secner.cti_tokenizer.v1"

# (indicator, the class `indicator_regex` gives it); each must come out as one token.
INDICATORS = [
    ("1.2.3.4", "ipv4"),
    ("192.168.10.254:8080", "ipv4"),
    ("10.0.0.0/8", "ipv4"),
    ("1.2.3[.]4", "ipv4"),
    ("2001:db8::ff00:42:8329", "ipv6"),
    ("2001:0db8:85a3:0000:0000:8a2e:0370:7334", "ipv6"),
    ("fe80::1", "ipv6"),
    ("hxxp://evil[.]com/a.php", "url"),
    ("http[:]//mbl[.]shunwang[.]com/cfg/config[.]json", "url"),
    ("https://example.com/path/to/page.php?id=1&x=y#top", "url"),
    ("HXXPS://Bad.Example.org/", "url"),
    ("evil.com", "domain"),
    ("update.bad-site.co.uk", "domain"),
    ("evil[.]com/a.php", "domain"),
    ("attacker@evil.com", "email"),
    ("bob[at]evil[.]com", "email"),
    ("d41d8cd98f00b204e9800998ecf8427e", "hash"),
    ("DA39A3EE5E6B4B0D3255BFEF95601890AFD80709", "hash"),
    ("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "hash"),
    ("C:\\Windows\\System32\\cmd.exe", "windows_path"),
    ("%APPDATA%\\Microsoft\\svchost.exe", "windows_path"),
    ("\\\\fileserver\\share$\\drop.bat", "windows_path"),
    ("/etc/passwd", "unix_path"),
    ("~/.ssh/authorized_keys", "unix_path"),
    ("HKEY_LOCAL_MACHINE\\Software\\Microsoft\\Windows\\CurrentVersion\\Run", "registry_key"),
    ("HKCU\\Software\\Classes\\mscfile\\shell\\open\\command", "registry_key"),
    ("CVE-2012-0158", "cve"),
    ("CVE-2017-11882", "cve"),
    ("CVE–2018–8440", "cve"),  # en dashes
    ("CVE‑2021‑44228", "cve"),  # non-breaking hyphens (U+2011), as PDF text has them
    ("CVE—2021—44228", "cve"),  # em dashes
    ("HKLM:\\Software\\Microsoft\\Windows\\CurrentVersion\\Run", "registry_key"),
    ("hklm\\software\\x", "registry_key"),
    ("evil[DOT]com", "domain"),
    ("evil[.]com[:]443", "domain"),
    ("1.2.3[.]4[:]8080", "ipv4"),
    ("USER[AT]EVIL[DOT]COM", "email"),
    ("MS17-010", "ms_bulletin"),
    ("admin@338", "actor_handle"),
    ("APT28", "actor_handle"),
    ("TG-3390", "actor_handle"),
]


@pytest.fixture(scope="module")
def nlp():
    config = {"nlp": {"tokenizer": {"@tokenizers": TOKENIZER_NAME}}}
    return spacy.blank("en", config=config)


def words(nlp, text):
    return [t.text for t in nlp(text)]


@pytest.mark.parametrize("indicator,kind", INDICATORS, ids=[i for i, _ in INDICATORS])
def test_indicator_is_one_token(nlp, indicator, kind):
    match = indicator_regex().match(indicator)
    assert match is not None and match.lastgroup == kind
    assert words(nlp, f"Visit {indicator}.") == ["Visit", indicator, "."]
    assert words(nlp, f"({indicator}), then") == ["(", indicator, ")", ",", "then"]
    assert words(nlp, f'"{indicator}";') == ['"', indicator, '"', ";"]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Visit 1.2.3.4.", ["Visit", "1.2.3.4", "."]),
        (
            "IPs 1.2.3.4, 5.6.7.8 and evil.com.",
            ["IPs", "1.2.3.4", ",", "5.6.7.8", "and", "evil.com", "."],
        ),
        (
            "Exploits CVE-2012-0158 (CVE-2017-11882).",
            ["Exploits", "CVE-2012-0158", "(", "CVE-2017-11882", ")", "."],
        ),
        (
            "The admin@338 group's spear-phishing.",
            ["The", "admin@338", "group", "'s", "spear-phishing", "."],
        ),
        (
            "APT28's zero-day, a well-known one.",
            ["APT28", "'s", "zero-day", ",", "a", "well-known", "one", "."],
        ),
        (
            "Its hash is 48BC113EC8BA20B8B80CD5D4DA92051A19D1032B.",
            ["Its", "hash", "is", "48BC113EC8BA20B8B80CD5D4DA92051A19D1032B", "."],
        ),
        ("Read /etc/passwd; then stop!", ["Read", "/etc/passwd", ";", "then", "stop", "!"]),
        ("Key HKCU\\Software\\X.", ["Key", "HKCU\\Software\\X", "."]),
        ("Ploutus-D. It isn't we've", ["Ploutus-D", ".", "It", "isn't", "we've"]),
        ("Backdoor.APT.Pgift via CMD/PowerShell", ["Backdoor.APT.Pgift", "via", "CMD/PowerShell"]),
        (
            "It cost $300 (55%) in the U.S.",
            ["It", "cost", "$300", "(", "55%", ")", "in", "the", "U.S."],
        ),
        (
            "dubbed “EternalBlue”, the Group’s tool",
            ["dubbed", "“EternalBlue”", ",", "the", "Group’s", "tool"],
        ),
        ("calls ShellExecute() on attack(s)", ["calls", "ShellExecute()", "on", "attack(s)"]),
        ("Figure 2: Timeline", ["Figure", "2:", "Timeline"]),
        ("Not a hash: deadbeef.", ["Not", "a", "hash", ":", "deadbeef", "."]),
        (
            "Dropped into C:\\Users\\Public\\. Then HKCU\\Software\\Run\\.",
            ["Dropped", "into", "C:\\Users\\Public\\", ".", "Then", "HKCU\\Software\\Run\\", "."],
        ),
    ],
)
def test_words_and_punctuation(nlp, text, expected):
    assert words(nlp, text) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        # Curly quotes around an indicator, with punctuation after them.
        (
            "was “evil[.]com” and ‘1.2.3.4’ and “hxxp://evil[.]com/a”.",
            ["was", "“", "evil[.]com", "”", "and", "‘", "1.2.3.4", "’", "and", "“"]
            + ["hxxp://evil[.]com/a", "”", "."],
        ),
        ("was “evil[.]com”, then", ["was", "“", "evil[.]com", "”", ",", "then"]),
        ("(“evil[.]com”)", ["(", "“", "evil[.]com", "”", ")"]),
        (
            "see “C:\\Users\\Public\\a.exe”) and ‘HKCU\\Software\\Run’",
            ["see", "“", "C:\\Users\\Public\\a.exe", "”", ")", "and"]
            + ["‘", "HKCU\\Software\\Run", "’"],
        ),
        (
            "“d41d8cd98f00b204e9800998ecf8427e” and “~/.ssh/id_rsa”.",
            ["“", "d41d8cd98f00b204e9800998ecf8427e", "”", "and", "“", "~/.ssh/id_rsa", "”", "."],
        ),
        # An unbalanced closing quote, and curly possessives.
        ("Visit hxxp://evil[.]com/a” now", ["Visit", "hxxp://evil[.]com/a", "”", "now"]),
        (
            "evil[.]com’s owner, 1.2.3.4’s and CVE-2017-11882’s",
            ["evil[.]com", "’s", "owner", ",", "1.2.3.4", "’s", "and", "CVE-2017-11882", "’s"],
        ),
        ("hxxp://evil[.]com/a’s page", ["hxxp://evil[.]com/a", "’s", "page"]),
        # Square brackets, but never inside a defang form.
        (
            "[1.2.3.4] and [evil[.]com] and [hxxp://evil[.]com/a].",
            ["[", "1.2.3.4", "]", "and", "[", "evil[.]com", "]", "and", "[", "hxxp://evil[.]com/a"]
            + ["]", "."],
        ),
        ("[user[at]evil[dot]com]", ["[", "user[at]evil[dot]com", "]"]),
        # Markdown links.
        (
            "See [evil.com](https://evil.com/a).",
            ["See", "[", "evil.com", "]", "(", "https://evil.com/a", ")", "."],
        ),
        (
            "See [here](https://evil.com/a).",
            ["See", "[here]", "(", "https://evil.com/a", ")", "."],
        ),
    ],
)
def test_quotes_brackets_and_possessives_come_off_indicators(nlp, text, expected):
    assert words(nlp, text) == expected


@pytest.mark.parametrize(
    "text",
    [
        # DNRTI's own tokens: no indicator inside, so nothing comes off.
        "“EternalBlue”",
        "‘Operation",
        "Sheep’",
        "victim’s",
        "Group’s",
        "[1]",
        "[Contract.doc]",
        # Matched by the indicator patterns but no indicator of compromise.
        "APT28’s",
        "‘APT-C-35’",
        "“MS17-010”",
        "“svchost.exe”",
        "“setup.py”",
        "‘invoice.one’",
        "“Evil.com”",
        "[svchost.exe]",
        "“%TEMP%”",
        "“/tmp”",
        # A bracket that opens no defang form: the `]` closes it, not the URL.
        "http://x/a[1]”",
        "“http://x/a[1]”",
    ],
)
def test_quotes_and_brackets_stay_on_other_words(nlp, text):
    assert words(nlp, text) == [text]


def test_quotes_come_off_exactly_what_cti_iocs_labels(nlp):
    """The tokenizer's idea of an indicator of compromise (`ioc_pattern`) and the component's
    (`iocs.classify`) agree: a curly quote comes off a word exactly when the word is one."""
    from spacy_secner.iocs import find_iocs

    candidates = [
        "evil.com", "evil.co.uk", "Evil.com", "evil[.]zip", "setup.py", "invoice.one", "main.java",
        "app.js.map", "id_rsa.pub", "evil.xyz", "Backdoor.APT.Pgift", "1.2.3.4", "10.0.0.0/8",
        "fe80::1", "::1", "hxxp://evil[.]com/a", "a@evil.com", "d41d8cd98f00b204e9800998ecf8427e",
        "ab" * 64, "CVE-2017-11882", "MS17-010", "APT28", "C:\\x\\y.exe", "%TEMP%",
        "/etc/passwd", "/tmp", "HKLM\\Software", "HKLM", "svchost.exe", "EternalBlue",
    ]  # fmt: skip
    for word in candidates:
        is_ioc = bool(find_iocs(nlp(word)))
        assert words(nlp, f"“{word}”") == (["“", word, "”"] if is_ioc else [f"“{word}”"]), word


def test_file_extension_tlds_are_top_level_domains():
    assert FILE_EXTENSION_TLDS <= top_level_domains()


def test_default_tokenizer_splits_what_ours_keeps(nlp):
    default = spacy.blank("en")
    assert words(default, "CVE-2012-0158") == ["CVE-2012", "-", "0158"]
    assert words(default, "spear-phishing") == ["spear", "-", "phishing"]
    assert words(nlp, "CVE-2012-0158 spear-phishing") == ["CVE-2012-0158", "spear-phishing"]


def test_empty_and_whitespace(nlp):
    assert len(nlp("")) == 0
    assert words(nlp, "  1.2.3.4 ") == ["  ", "1.2.3.4"]  # spaCy's usual whitespace handling


def test_tokenization_fidelity_on_fixture(nlp):
    sentences = [
        (
            ["APT28", "used", "CVE-2012-0158", "in", "spear-phishing", "."],
            ["B-HackOrg", "O", "B-Exp", "O", "B-Way", "O"],
        ),
        (
            ["The", "C2", "(", "1.2.3[.]4", ")", "is", "down", "."],
            ["O", "O", "O", "B-Tool", "O", "O", "O", "O"],
        ),
    ]
    ours = tokenization_fidelity(nlp.tokenizer, sentences)
    assert (ours["gold_tokens"], ours["tokens_exact"], ours["token_exact_share"]) == (14, 14, 1.0)
    assert (ours["entity_boundaries"], ours["boundary_share"]) == (8, 1.0)
    default = tokenization_fidelity(spacy.blank("en").tokenizer, sentences)
    assert default["tokens_exact"] == 12
    assert default["mismatch_kinds"] == {"split": 2, "merged": 0, "crossing": 0}
    assert {"gold": "CVE-2012-0158", "predicted": ["CVE-2012", "-", "0158"], "count": 1} in default[
        "top_mismatches"
    ]


SAMPLE = (
    "APT28 (aka Sofacy) sent spear-phishing mail from attacker@evil.com with CVE-2017-11882 docs; "
    "the C2 was hxxp://evil[.]com/a.php?id=1 at 1.2.3[.]4 and 2001:db8::1. It dropped "
    "C:\\Users\\Public\\svc.exe, set HKCU\\Software\\Microsoft\\Windows\\CurrentVersion\\Run and "
    "read /etc/passwd. MD5: d41d8cd98f00b204e9800998ecf8427e. Didn't admin@338's “tools” cost $300?"
    " Quoted: “evil[.]com”, [1.2.3[.]4], evil[.]com’s owner, [evil.com](https://evil.com/a)."
)


def test_serialization_round_trip(nlp, tmp_path):
    expected = words(nlp, SAMPLE)
    restored = Tokenizer(nlp.vocab).from_bytes(nlp.tokenizer.to_bytes())
    assert [t.text for t in restored(SAMPLE)] == expected
    nlp.to_disk(tmp_path / "pipeline")
    reloaded = spacy.load(tmp_path / "pipeline")
    assert reloaded.config["nlp"]["tokenizer"] == {"@tokenizers": TOKENIZER_NAME}
    assert words(reloaded, SAMPLE) == expected


def test_round_trip_in_fresh_process_through_entry_point(nlp, tmp_path):
    """A fresh interpreter that never imports spacy_secner gets the tokenizer from the
    `spacy_tokenizers` entry point (declared here in a stand-in distribution, so the test does not
    depend on the installed metadata being current) and tokenizes exactly as we do."""
    nlp.to_disk(tmp_path / "pipeline")
    dist_info = tmp_path / "site" / "secner_tokenizer_probe-0.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: secner-tokenizer-probe\nVersion: 0.0\n"
    )
    (dist_info / "entry_points.txt").write_text(
        f"[spacy_tokenizers]\n{TOKENIZER_NAME} = spacy_secner.tokenizer:cti_tokenizer\n"
    )
    script = textwrap.dedent("""
        import json, sys
        sys.path.insert(0, sys.argv[1])
        import spacy
        from spacy.util import registry
        registry.tokenizers.get_all()  # nothing of ours yet, unless an entry point brings it
        nlp = spacy.load(sys.argv[2])
        func = registry.tokenizers.get(sys.argv[3])
        print(json.dumps({"module": func.__module__, "words": [t.text for t in nlp(sys.argv[4])]}))
        """)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(tmp_path / "site"),
            str(tmp_path / "pipeline"),
            TOKENIZER_NAME,
            SAMPLE,
        ],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"module": "spacy_secner.tokenizer", "words": words(nlp, SAMPLE)}
