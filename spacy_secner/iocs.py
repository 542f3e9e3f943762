"""Indicators of compromise as typed spans: the `cti_iocs` component.

The threat-report tokenizer (`tokenizer.py`) already keeps every indicator in one token; this
component says what each one is. It matches each token against the tokenizer's own
`INDICATOR_PATTERNS` and writes the indicators to `doc.spans["iocs"]`, labelled `ipv4`, `ipv6`,
`domain`, `url`, `email`, `md5`, `sha1`, `sha256`, `cve`, `file_path` or `registry_key`, with
the refanged, normalised value in `span._.ioc_value` (`hxxp://evil[.]com` -> `http://evil.com`).

Refanging undoes exactly the defanged forms the patterns accept (`DOT_FORMS`, `AT_FORMS`,
`SCHEME_SEPARATORS`, `PORT_SEPARATORS`, hxxp and fxp, in any letter case), so what is recognised
and what is refanged cannot drift apart. ioc-fanger knows more forms, but a form the patterns do
not accept never becomes a span, and the component must not add a requirement to the pipeline; the
IOC benchmark compares the two on the labelled sentences.

A token that matches a pattern is not always an indicator. These rules keep prose out:
- a bare host (not defanged, no scheme) is a domain only when it is all lower case, ends in a
  delegated top-level domain (`resources/tlds.txt`) and that TLD is not also a common file extension
  (`FILE_EXTENSION_TLDS`: `.zip`, `.py`, `.one`, `.pub`...): `svchost.exe`, `Backdoor.APT.Pgift`,
  `setup.py`, `invoice.one` are no domains, `evil.com` and `Evil[.]zip` are;
- a plain dotted quad after a word such as "version" or "build" is a version number, and one with
  a prefix length over /32 (`1.2.3.4/33`) is nothing;
- a Unix path needs two parts (`/etc/passwd`), so `and /or` or `/24` are none; a registry hive
  in other than capitals needs a key (`hklm\\software`, not `hku`).

The tokenizer splits curly quotes, square brackets and `’s` from an indicator
(`“evil[.]com”` -> `“ evil[.]com ”`) by `tokenizer.ioc_pattern`, which mirrors these rules.
"""

import re
from functools import lru_cache
from typing import Callable, Iterable, List, Optional, Tuple

from spacy.language import Language
from spacy.tokens import Doc, Span, Token

from .tokenizer import (
    AT_FORMS,
    CVE_DASHES,
    DOT_FORMS,
    FILE_EXTENSION_TLDS,
    PORT_SEPARATORS,
    SCHEME_SEPARATORS,
    URL_SCHEMES,
    alternatives,
    indicator_regex,
    top_level_domains,
)

SPANS_KEY = "iocs"
IOC_LABELS = (
    "ipv4",
    "ipv6",
    "domain",
    "url",
    "email",
    "md5",
    "sha1",
    "sha256",
    "cve",
    "file_path",
    "registry_key",
)
HASH_LABELS = {32: "md5", 40: "sha1", 64: "sha256"}
# `FILE_EXTENSION_TLDS` (top-level domains that are also file extensions: a bare `name.zip` is a
# file unless the report defanged it) lives in `tokenizer`, whose quote splitting uses it too.
# A dotted quad right after one of these words is a version or section number, not an address.
VERSION_WORDS = frozenset(
    {"version", "versions", "ver", "v", "build", "release", "firmware", "update", "patch"}
    | {"section", "figure", "fig", "table", "chapter", "appendix"}
)
HIVES = {
    "HKLM": "HKEY_LOCAL_MACHINE",
    "HKCU": "HKEY_CURRENT_USER",
    "HKCR": "HKEY_CLASSES_ROOT",
    "HKCC": "HKEY_CURRENT_CONFIG",
    "HKU": "HKEY_USERS",
}

# `alternatives` ignores letter case, as the patterns do: `[DOT]` and `(At)` are refanged too.
_DEFANGED_DOT = re.compile(alternatives([form for form in DOT_FORMS if form != "."]))
_DEFANGED_AT = re.compile(alternatives([form for form in AT_FORMS if form != "@"]))
_DEFANGED_PORT = re.compile(alternatives([form for form in PORT_SEPARATORS if form != ":"]))
_SCHEME = re.compile(rf"(?i:({URL_SCHEMES}){alternatives(SCHEME_SEPARATORS)})")
_PATH_START = re.compile(r"[/?#]")
_CVE = re.compile(rf"(?i:cve)[{CVE_DASHES}]?(\d{{4}})[{CVE_DASHES}](\d+)")
_CIDR = re.compile(r"/(?:3[0-2]|[12]?\d)")  # an IPv4 prefix length: /0 to /32

if not Span.has_extension("ioc_value"):
    Span.set_extension("ioc_value", default=None)


def refang(text: str) -> str:
    """Undo the defanged forms the indicator patterns accept, in any letter case: `[.]`/`(dot)`...
    -> `.`, `[at]`... -> `@`, `hxxp[:]//` -> `http://`, `fxp://` -> `ftp://`, then a port's `[:]`
    -> `:`. Other text is unchanged."""
    text = _SCHEME.sub(_refang_scheme, text, count=1)
    text = _DEFANGED_AT.sub("@", _DEFANGED_DOT.sub(".", text))
    return _DEFANGED_PORT.sub(":", text)


def _refang_scheme(match: "re.Match[str]") -> str:
    scheme = match.group(1).lower().replace("xx", "tt")
    return ("ftp" if scheme == "fxp" else scheme) + "://"


def classify(text: str, kind: str, previous: str = "") -> Optional[Tuple[str, str]]:
    """The IOC label and normalised value of a token that matched the tokenizer's pattern `kind`.

    text (str): The token's text.
    kind (str): The name of the `INDICATOR_PATTERNS` entry it matched (`match.lastgroup`).
    previous (str): The word before it, for version numbers.
    RETURNS (Optional[Tuple[str, str]]): `(label, value)`, or None if it is no indicator.
    """
    if kind == "url":
        value = refang(text)
        scheme, sep, rest = value.partition("://")
        host, path = _split_path(rest)
        return "url", f"{scheme}{sep}{host.lower()}{path}"
    if kind == "email":
        local, _, host = refang(text).rpartition("@")
        return "email", f"{local}@{host.lower()}"
    if kind == "ipv4":
        if previous.lower().rstrip(".") in VERSION_WORDS and text == refang(text):
            return None
        address, path = _split_path(refang(text), cidr=True)
        if path[1:].isdigit():
            return None  # `1.2.3.4/33`: no prefix length, and no path either
        return ("url" if path else "ipv4"), address + path
    if kind == "ipv6":
        prefix = text.partition("/")[2]
        return None if prefix and int(prefix) > 128 else ("ipv6", text.lower())
    if kind == "hash":
        label = HASH_LABELS.get(len(text))
        return None if label is None else (label, text.lower())
    if kind == "cve":
        match = _CVE.match(text)
        return None if match is None else ("cve", "CVE-{}-{}".format(*match.groups()))
    if kind == "registry_key":
        hive, sep, rest = text.rstrip("\\").partition("\\")
        if not sep and hive != hive.upper():
            return None  # a bare `hku` or `Hkcu` is a word
        hive = hive.rstrip(":").upper()  # PowerShell's `HKLM:` drive
        return "registry_key", HIVES.get(hive, hive) + sep + rest
    if kind == "windows_path":
        return ("file_path", text) if "\\" in text else None
    if kind == "unix_path":
        return ("file_path", text) if text.rstrip("/").count("/") >= 2 else None
    if kind == "domain":
        return _domain(text)
    return None


def _domain(text: str) -> Optional[Tuple[str, str]]:
    value = refang(text)
    host, path = _split_path(value)
    name = host.rsplit(":", 1)[0]
    tld = name.rsplit(".", 1)[-1].lower()
    if tld not in top_level_domains():
        return None
    if value == text and (tld in FILE_EXTENSION_TLDS or name != name.lower()):
        return None  # not defanged: `setup.py`, `Trojan.Win32.Agent.bz` are no domains
    return ("url" if path else "domain"), host.lower() + path


def _split_path(value: str, *, cidr: bool = False) -> Tuple[str, str]:
    """`host[:port]` and the rest (`/a.php?x`), keeping a CIDR suffix (`/24`) with an address."""
    match = _PATH_START.search(value)
    if match is None:
        return value, ""
    host, path = value[: match.start()], value[match.start() :]
    if cidr and _CIDR.fullmatch(path):
        return value, ""
    return host, path


def find_iocs(doc: Doc) -> List[Span]:
    """The indicators of compromise among the tokens of `doc`, as labelled spans with
    `span._.ioc_value` set. Each is one token, as the threat-report tokenizer keeps them."""
    match = _indicator_match()
    spans = []
    for token in doc:
        found = match(token.text)
        if found is None or found.lastgroup is None:
            continue
        result = classify(token.text, found.lastgroup, _previous_word(token))
        if result is not None:
            span = Span(doc, token.i, token.i + 1, label=result[0])
            span._.ioc_value = result[1]
            spans.append(span)
    return spans


@lru_cache(maxsize=1)
def _indicator_match() -> Callable[[str], Optional["re.Match[str]"]]:
    return indicator_regex().match


def _previous_word(token: Token) -> str:
    for i in range(token.i - 1, max(token.i - 3, -1), -1):
        if not token.doc[i].is_space and not token.doc[i].is_punct:
            return token.doc[i].text
    return ""


class IndicatorFinder:
    """Pipeline component: indicators of compromise into `doc.spans[spans_key]`. It has no
    weights and needs no training; the group is replaced on every call."""

    def __init__(self, name: str = "cti_iocs", *, spans_key: str = SPANS_KEY) -> None:
        self.name = name
        self.spans_key = spans_key

    def __call__(self, doc: Doc) -> Doc:
        doc.spans[self.spans_key] = find_iocs(doc)
        return doc

    def pipe(self, docs: Iterable[Doc], *, batch_size: int = 128) -> Iterable[Doc]:
        for doc in docs:
            yield self(doc)


@Language.factory(
    "cti_iocs",
    assigns=["doc.spans"],
    default_config={"spans_key": SPANS_KEY},
    default_score_weights={},
)
def make_cti_iocs(nlp: Language, name: str, spans_key: str) -> IndicatorFinder:
    """Build the `cti_iocs` component.

    spans_key (str): The `doc.spans` group to write, "iocs" by default.
    RETURNS (IndicatorFinder): The component.
    """
    return IndicatorFinder(name, spans_key=spans_key)
