"""The `cti_iocs` component: indicator types, refanged values, prose that is no indicator, and
its place in a saved pipeline."""

import pytest
import spacy
from spacy.language import Language
from spacy.tokens import Doc

from conftest import load_in_fresh_process
from spacy_secner.iocs import IOC_LABELS, SPANS_KEY, find_iocs, refang
from spacy_secner.tokenizer import build_cti_tokenizer


def blank_nlp() -> Language:
    nlp = spacy.blank("en")
    nlp.tokenizer = build_cti_tokenizer(nlp)
    nlp.add_pipe("cti_iocs")
    return nlp


def iocs_of(doc: Doc):
    return [(s.text, s.label_, s._.ioc_value) for s in doc.spans[SPANS_KEY]]


@pytest.fixture(scope="module")
def nlp() -> Language:
    return blank_nlp()


@pytest.mark.parametrize(
    "text,label,value",
    [
        ("hxxp://evil[.]com/gate.php", "url", "http://evil.com/gate.php"),
        ("hXXps[:]//Evil[.]COM/a?b=1", "url", "https://evil.com/a?b=1"),
        ("fxp://files[.]bad[.]org/x", "url", "ftp://files.bad.org/x"),
        ("evil[.]com/a.php", "url", "evil.com/a.php"),
        ("ldap://198.51.100[.]23:1389/a", "url", "ldap://198.51.100.23:1389/a"),
        ("http://1.2.3.4/x", "url", "http://1.2.3.4/x"),
        ("192.168.10[.]5/upload", "url", "192.168.10.5/upload"),
        ("185.220.101[.]4", "ipv4", "185.220.101.4"),
        ("185.220.101.4:443", "ipv4", "185.220.101.4:443"),
        ("10.0.0.0/8", "ipv4", "10.0.0.0/8"),
        ("FE80::1ff:fe23:4567:890A", "ipv6", "fe80::1ff:fe23:4567:890a"),
        ("evil[.]com", "domain", "evil.com"),
        ("update.microsoft-cdn.com", "domain", "update.microsoft-cdn.com"),
        ("payload[.]zip", "domain", "payload.zip"),
        ("admin[at]evil-mail[.]ru", "email", "admin@evil-mail.ru"),
        ("j.doe@Corp.COM", "email", "j.doe@corp.com"),
        ("D41D8CD98F00B204E9800998ECF8427E", "md5", "d41d8cd98f00b204e9800998ecf8427e"),
        (
            "da39a3ee5e6b4b0d3255bfef95601890afd80709",
            "sha1",
            "da39a3ee5e6b4b0d3255bfef95601890afd80709",
        ),
        (
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ),
        ("CVE-2017-11882", "cve", "CVE-2017-11882"),
        ("cve2018–8440", "cve", "CVE-2018-8440"),
        ("CVE–2018–8440", "cve", "CVE-2018-8440"),  # en dashes
        ("CVE‑2021‑44228", "cve", "CVE-2021-44228"),  # non-breaking hyphens (U+2011)
        ("CVE—2021—44228", "cve", "CVE-2021-44228"),  # em dashes
        ("CVE‐2019_0708", "cve", "CVE-2019-0708"),  # U+2010 hyphen, underscore
        ("evil[DOT]com", "domain", "evil.com"),
        ("Evil(Dot)COM", "domain", "evil.com"),
        ("USER[AT]EVIL[DOT]COM", "email", "USER@evil.com"),
        ("evil[.]com[:]443", "domain", "evil.com:443"),
        ("1.2.3[.]4[:]8080", "ipv4", "1.2.3.4:8080"),
        ("hxxp://evil[.]com[:]8443/a", "url", "http://evil.com:8443/a"),
        ("1.2.3.4/0", "ipv4", "1.2.3.4/0"),
        ("1.2.3.4/32", "ipv4", "1.2.3.4/32"),
        ("2001:db8::/128", "ipv6", "2001:db8::/128"),
        ("C:\\Users\\Public\\svchost.exe", "file_path", "C:\\Users\\Public\\svchost.exe"),
        ("%APPDATA%\\Microsoft\\upd.exe", "file_path", "%APPDATA%\\Microsoft\\upd.exe"),
        ("/tmp/.x/run.sh", "file_path", "/tmp/.x/run.sh"),
        (
            "HKLM\\Software\\Microsoft\\Windows\\CurrentVersion\\Run\\",
            "registry_key",
            "HKEY_LOCAL_MACHINE\\Software\\Microsoft\\Windows\\CurrentVersion\\Run",
        ),
        (  # PowerShell's drive form
            "HKLM:\\Software\\Microsoft\\Windows\\CurrentVersion\\Run",
            "registry_key",
            "HKEY_LOCAL_MACHINE\\Software\\Microsoft\\Windows\\CurrentVersion\\Run",
        ),
        ("hklm\\software\\x", "registry_key", "HKEY_LOCAL_MACHINE\\software\\x"),
        ("hkcu:\\Software\\x\\", "registry_key", "HKEY_CURRENT_USER\\Software\\x"),
    ],
)
def test_indicator_in_a_sentence(nlp, text, label, value):
    doc = nlp(f"The sample used {text}, then stopped.")
    assert iocs_of(doc) == [(text, label, value)]
    assert label in IOC_LABELS


@pytest.mark.parametrize(
    "text",
    [
        "It ships version 1.2.3.4 of the loader.",
        "See section 2.1.3.4 for the details.",
        "It drops svchost.exe and invoice.doc next to setup.py and data.zip.",
        "Detected as Backdoor.APT.Pgift and Trojan.Win32.Agent.bz by vendors.",
        "Amazon.com and Node.js were mentioned.",
        "Use TCP/UDP and/or /24 ranges.",
        "A SHA-512 digest " + "ab" * 64 + " is no label of ours.",
        "The bare %TEMP% variable and MS17-010 and APT28 are no indicators.",
        # File names whose extension is also a TLD.
        "Open invoice.one and id_rsa.pub and normal.dot and setup.run and data.cab.",
        "Sources main.java and app.js.map and oem.cat and log4j.properties were read.",
        # A scheme with nothing after it; a prefix length no IPv4 address has.
        "Just prefix it with http:// or hxxp[:]// in the browser.",
        "Beacons 1.2.3.4/33 and 1.2.3.4/99 were seen.",
        # A lower-case hive name alone is a word (Hong Kong University).
        "A study at hku and Hkcu found nothing.",
        # Quotes and brackets around words that are no indicators.
        "Dubbed “EternalBlue” [1], the Group’s ‘APT-C-35’ used “svchost.exe”.",
    ],
)
def test_prose_that_is_no_indicator(nlp, text):
    assert iocs_of(nlp(text)) == []


@pytest.mark.parametrize(
    "text,expected",
    [
        (
            "The C2 was “evil[.]com” and ‘1.2.3.4’ and “hxxp://evil[.]com/a”.",
            [
                ("evil[.]com", "domain", "evil.com"),
                ("1.2.3.4", "ipv4", "1.2.3.4"),
                ("hxxp://evil[.]com/a", "url", "http://evil.com/a"),
            ],
        ),
        (
            "Payloads (see “C:\\Users\\Public\\a.exe”) and ‘HKCU\\Software\\Run’ and "
            "“d41d8cd98f00b204e9800998ecf8427e”.",
            [
                ("C:\\Users\\Public\\a.exe", "file_path", "C:\\Users\\Public\\a.exe"),
                ("HKCU\\Software\\Run", "registry_key", "HKEY_CURRENT_USER\\Software\\Run"),
                ("d41d8cd98f00b204e9800998ecf8427e", "md5", "d41d8cd98f00b204e9800998ecf8427e"),
            ],
        ),
        (
            "The evil[.]com’s registrant, 1.2.3.4’s owner and CVE-2017-11882’s exploit.",
            [
                ("evil[.]com", "domain", "evil.com"),
                ("1.2.3.4", "ipv4", "1.2.3.4"),
                ("CVE-2017-11882", "cve", "CVE-2017-11882"),
            ],
        ),
        ("Visit hxxp://evil[.]com/a” now.", [("hxxp://evil[.]com/a", "url", "http://evil.com/a")]),
        (
            "Indicators: [1.2.3.4] and [evil[.]com] and [hxxp://evil[.]com/a].",
            [
                ("1.2.3.4", "ipv4", "1.2.3.4"),
                ("evil[.]com", "domain", "evil.com"),
                ("hxxp://evil[.]com/a", "url", "http://evil.com/a"),
            ],
        ),
        (
            "See [evil.com](https://evil.com/a).",
            [
                ("evil.com", "domain", "evil.com"),
                ("https://evil.com/a", "url", "https://evil.com/a"),
            ],
        ),
        (
            "Dropped into C:\\Users\\Public\\.",
            [("C:\\Users\\Public\\", "file_path", "C:\\Users\\Public\\")],
        ),
    ],
)
def test_indicator_in_quotes_brackets_or_a_possessive(nlp, text, expected):
    assert iocs_of(nlp(text)) == expected


def test_defanged_list_keeps_offsets(nlp):
    text = "IOCs:\n- hxxp://evil[.]com/a\n- 10.0.0[.]1\n- bad[dot]example[.]net\n"
    doc = nlp(text)
    found = [(s.start_char, s.end_char, s.label_, s._.ioc_value) for s in doc.spans["iocs"]]
    assert [text[a:b] for a, b, _, _ in found] == [
        "hxxp://evil[.]com/a",
        "10.0.0[.]1",
        "bad[dot]example[.]net",
    ]
    assert [(label, value) for _, _, label, value in found] == [
        ("url", "http://evil.com/a"),
        ("ipv4", "10.0.0.1"),
        ("domain", "bad.example.net"),
    ]


def test_refang_undoes_the_accepted_forms_only():
    assert refang("hxxps://a(dot)b{.}c(.)d/e") == "https://a.b.c.d/e"
    assert refang("x[@]y[.]z") == "x@y.z"
    assert refang("no indicator [here] (at all)") == "no indicator [here] (at all)"
    # Any letter case, as the patterns accept it, and a defanged port separator.
    assert refang("USER[AT]EVIL[DOT]COM") == "USER@EVIL.COM"
    assert refang("hXXps[:]//a(DOT)b[:]8443/x") == "https://a.b:8443/x"


def test_empty_doc_and_a_doc_without_the_component(nlp):
    assert list(nlp("").spans[SPANS_KEY]) == []
    plain = spacy.blank("en")("evil[.]com")
    assert SPANS_KEY not in plain.spans
    # Any tokenizer will do where it keeps the indicator in one token.
    assert [(s.label_, s._.ioc_value) for s in find_iocs(plain)] == [("domain", "evil.com")]


def test_spans_key_setting():
    nlp = spacy.blank("en")
    nlp.tokenizer = build_cti_tokenizer(nlp)
    nlp.add_pipe("cti_iocs", config={"spans_key": "indicators"})
    doc = nlp("Beacon to 8.8.8[.]8 now.")
    assert [s.label_ for s in doc.spans["indicators"]] == ["ipv4"]
    assert "iocs" not in doc.spans


def test_pipe_equals_call(nlp):
    texts = ["Seen at evil[.]com .", "", "Hash 44d88612fea8a8f36de82e1278abb02f here.", "None."]
    expected = [
        [("evil[.]com", "domain", "evil.com")],
        [],
        [("44d88612fea8a8f36de82e1278abb02f", "md5", "44d88612fea8a8f36de82e1278abb02f")],
        [],
    ]
    assert [iocs_of(nlp(t)) for t in texts] == expected
    assert [iocs_of(d) for d in nlp.pipe(texts, batch_size=3)] == expected


def test_saved_with_and_without_the_component(trained_cnn_nlp, tmp_path):
    """A pipeline saved before cti_iocs existed still loads; one with it loads in a fresh
    process through the entry points and finds the same indicators."""
    text = "Sofacy used hxxp://evil[.]com/x in 2014 ."
    without = tmp_path / "without"
    trained_cnn_nlp.to_disk(without)
    loaded = spacy.load(without)
    assert loaded.pipe_names == ["ner_crf"]
    assert "iocs" not in loaded(text).spans

    loaded.tokenizer = build_cti_tokenizer(loaded)
    loaded.add_pipe("cti_iocs", last=True)
    with_iocs = tmp_path / "with"
    loaded.to_disk(with_iocs)
    reloaded = spacy.load(with_iocs)
    assert reloaded.pipe_names == ["ner_crf", "cti_iocs"]
    assert iocs_of(reloaded(text)) == [("hxxp://evil[.]com/x", "url", "http://evil.com/x")]
    result = load_in_fresh_process(with_iocs, [text], tmp_path)
    assert result["pipe_names"] == ["ner_crf", "cti_iocs"]
    start = text.index("hxxp")
    assert result["iocs"] == [[[start, start + len("hxxp://evil[.]com/x"), "url", "http://evil.com/x"]]]
