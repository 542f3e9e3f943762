"""A tokenizer for threat reports: indicators stay whole, words split the way DNRTI's did.

It starts from the language's own settings (`nlp.Defaults` prefixes, suffixes, infixes, special
cases and `url_match`) and changes them in five ways, each checked against DNRTI's tokens:

- `token_match` keeps every indicator in `INDICATOR_PATTERNS` whole. spaCy tries it on a
  whitespace-separated chunk before and after each round of prefix/suffix stripping, so
  `(1.2.3.4),` loses its bracket and comma but never its dots. No indicator may end in sentence
  punctuation or a possessive, or `Visit 1.2.3.4.` would keep its full stop.
- Infixes: hyphens and dashes no longer split (`spear-phishing`, `CVE-2012-0158`,
  `tools—EternalRomance` are single DNRTI tokens), nor do `.`, `/` and `:` between letters
  (`Backdoor.APT.Pgift`, `CMD/PowerShell`) or a trade mark sign (`Google®`).
- Prefixes and suffixes: whatever DNRTI never splits off stays attached: curly quotes and `’s`
  (it does split the straight `"` and `'s`), `$`, `%` and units, `#`, `_`, square brackets.
  A full stop after a lone capital (`...D1032B.`, `Backdoor.Remexi.B.`) or after a path's final
  `/` or `\\`, and a curly quote after a comma (`malware,”`) come off.
- Around an indicator of compromise (`ioc_pattern`: what the `cti_iocs` component labels), curly
  quotes, square brackets and `’s` do come off: `“evil[.]com”`, `[1.2.3.4]`, `evil[.]com’s`,
  `[evil.com](https://evil.com/a)`. `“EternalBlue”`, `[1]`, `APT28’s` and `victim’s` stay whole,
  as in DNRTI. See `_ioc_prefixes` and `_ioc_infixes`.
- Special cases: only the one-token, word-like ones (abbreviations such as `U.S.`, `Jan.`) are
  kept. English's contraction rules (`isn't` -> `is n't`, `Shed` -> `She d`) go, as DNRTI keeps
  contractions whole, and so do emoticons, which misfire on text like `Figure 8)`.

Every rule is a plain regex, so `Tokenizer.to_disk` stores it and `spacy.load` restores it.
Flags are written inline (`(?i:...)`) because only the pattern text is serialized.
"""

import re
from collections import Counter
from functools import lru_cache
from importlib.resources import files
from typing import (
    Any,
    Callable,
    Dict,
    FrozenSet,
    Iterable,
    List,
    Optional,
    Pattern,
    Sequence,
    Tuple,
)

from spacy.lang.char_classes import ALPHA
from spacy.language import Language
from spacy.tokenizer import Tokenizer
from spacy.tokens import Doc
from spacy.util import compile_infix_regex, compile_prefix_regex, compile_suffix_regex, registry

from .detokenize import join_tokens, token_offsets

# A dot, an at sign, a scheme separator and a port separator as reports write them: plain or
# defanged, in any letter case (`[DOT]`, `(At)`). The patterns below accept exactly these forms,
# and `iocs.refang` undoes exactly these.
DOT_FORMS = (".", "[.]", "(.)", "{.}", "[dot]", "(dot)")
AT_FORMS = ("@", "[@]", "[at]", "(at)")
SCHEME_SEPARATORS = ("://", "[://]", "[:]//", ":[//]")
PORT_SEPARATORS = (":", "[:]")
# Schemes, defanged (hxxp, fxp) or not, before a separator.
URL_SCHEMES = r"h(?:tt|xx)ps?|s?ftps?|fxp|file|wss?|tcp|udp|ldaps?|smb"
# The dashes of a CVE id: hyphen-minus, underscore, and the Unicode hyphens and dashes that PDF
# text and word processors put there (U+2010 hyphen, U+2011 non-breaking hyphen, U+2012 figure
# dash, en dash, em dash). `iocs.classify` writes every one of them as `-`.
CVE_DASHES = "-_\u2010\u2011\u2012\u2013\u2014"


def alternatives(forms: Sequence[str]) -> str:
    """A non-capturing, case-insensitive group matching any of `forms` literally."""
    return "(?i:" + "|".join(re.escape(form) for form in forms) + ")"


_DOT = alternatives(DOT_FORMS)
_AT = alternatives(AT_FORMS)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_H16 = r"[0-9A-Fa-f]{1,4}"
_HOST = rf"(?:[A-Za-z0-9](?:[\w-]*[A-Za-z0-9])?{_DOT})+[A-Za-z]{{2,63}}"
_PORT_PATH = rf"(?:{alternatives(PORT_SEPARATORS)}\d{{1,5}})?(?:[/?#]\S*)?"
_CVE_DASH = f"[{CVE_DASHES}]"

INDICATOR_PATTERNS: Dict[str, str] = {
    # Scheme first, so hxxp://, fxp:// and http[:]// make a URL whatever follows them (but
    # something must: `http://` alone is none).
    "url": rf"(?i:{URL_SCHEMES}){alternatives(SCHEME_SEPARATORS)}\S+",
    "email": rf"[\w.+-]+{_AT}{_HOST}",
    # Dotted quad, defanged or not, with an optional CIDR suffix (/0 to /32), port and path.
    "ipv4": rf"{_OCTET}(?:{_DOT}{_OCTET}){{3}}(?:/(?:3[0-2]|[12]?\d))?{_PORT_PATH}",
    # All eight groups, or one `::` with groups either side; optional prefix length. A colon is
    # no infix here, but the pattern also keeps `::1` and `fe80::1` from losing a prefix.
    "ipv6": rf"(?:(?:{_H16}:){{7}}{_H16}|(?=[0-9A-Fa-f:]*[0-9A-Fa-f])"
    rf"(?:{_H16}(?::{_H16}){{0,6}})?::(?:{_H16}(?::{_H16}){{0,6}})?)(?:/\d{{1,3}})?",
    # MD5, SHA-1, SHA-256 (and SHA-512): exactly that many hex digits.
    "hash": r"(?:[0-9A-Fa-f]{32}|[0-9A-Fa-f]{40}|[0-9A-Fa-f]{64}|[0-9A-Fa-f]{128})",
    # Reports write CVE-2017-11882, CVE2017-11882, CVE-2017_1882, CVE–2018–8440, CVE‑2021‑44228.
    "cve": rf"(?i:cve){_CVE_DASH}?\d{{4}}{_CVE_DASH}\d{{3,7}}",
    "ms_bulletin": r"MS\d{2}-\d{3}",
    # Hive name first, so a key is recognised without a drive letter or slash before it; any
    # letter case, and PowerShell's drive form `HKLM:\...` for the short names.
    "registry_key": r"(?i:HKEY_[A-Z_]+|HK(?:LM|CU|CR|CC|U):?)(?:\\[^\\\s]+)*\\?",
    # Drive letter, UNC share or %ENVVAR%, then backslash-separated parts; or a bare %ENVVAR%.
    "windows_path": r"(?:[A-Za-z]:|\\\\[\w.$-]+|%\w+%)(?:\\[^\\\s]*)+|%\w+%",
    # From the root or home: /etc/passwd, ~/.ssh/id_rsa, /tmp/.x/run.sh.
    "unix_path": r"~?(?:/[\w.+@-]+)+/?",
    # A bare host, defanged or not, with an optional port and path: evil[.]com/a.php.
    "domain": rf"{_HOST}{_PORT_PATH}",
    # Group handles with digits in them: admin@338, APT28, TG-3390, APT-C-06, UNC2452.
    "actor_handle": r"[A-Za-z][\w.]*@\d+|[A-Z][A-Za-z]*(?:-[A-Z]+)*-?\d+[A-Za-z]?",
}
# No indicator ends in the punctuation a sentence puts after a word, nor in a possessive:
# `evil.com/a.php).` fails as a whole, sheds `.` and `)` as suffixes, and then matches;
# `hxxp://evil[.]com/a’s` fails, and `_ioc_prefixes` splits it.
_NOT_AFTER_INDICATOR = r"""(?<![.,;:!?'"()\[\]{}<>“”‘’])(?<!['’]s)"""
# Word forms that DNRTI keeps whole although they end in punctuation, so they are exempt from
# the rule above.
WORD_FORM_PATTERNS: Dict[str, str] = {
    # Numbered headings keep their colon (`Figure 2:`, `Tactic #1:`), as in 15 of DNRTI's 19.
    "heading_number": r"#?\d{1,3}:",
    # Function calls and optional plurals: `ShellExecute()`, `attack(s)`; never split in DNRTI.
    "function_call": r"[A-Za-z_][\w.]*\(\)",
    "optional_plural": r"[A-Za-z]+\((?:s|es)\)",
}


def indicator_regex(
    patterns: Optional[Dict[str, str]] = None, word_forms: Optional[Dict[str, str]] = None
) -> Pattern:
    """Compile indicator patterns into one anchored regex with a named group per class.

    patterns (Optional[Dict[str, str]]): Class name to pattern, none of which may match a
        string ending in sentence punctuation; `INDICATOR_PATTERNS` by default.
    word_forms (Optional[Dict[str, str]]): Class name to pattern, exempt from that rule;
        `WORD_FORM_PATTERNS` by default.
    RETURNS (Pattern): Matches a whole string that is one indicator or word form;
        `match.lastgroup` names the class.
    """
    patterns = INDICATOR_PATTERNS if patterns is None else patterns
    word_forms = WORD_FORM_PATTERNS if word_forms is None else word_forms
    guarded = "|".join(f"(?P<{name}>{pattern})" for name, pattern in patterns.items())
    exempt = "".join(f"|(?P<{name}>{pattern})" for name, pattern in word_forms.items())
    return re.compile(rf"(?:(?:{guarded}){_NOT_AFTER_INDICATOR}{exempt})\Z")



# Top-level domains that are also common file extensions: a plain `name.one` is a file (OneNote
# lure), not a host, unless the report defanged it (`name[.]one`). Chosen as the delegated TLDs
# (`resources/tlds.txt`) among the file extensions that reports mention; `.ml`, `.in`, `.download`
# and the like are TLDs too, but far more often hosts than files.
FILE_EXTENSION_TLDS: FrozenSet[str] = frozenset(
    {"zip", "mov", "py", "sh", "pl", "rs", "md", "so", "ps", "ai", "cc", "app"}
    | {"one", "pub", "dot", "run", "cab", "java", "map", "cat", "properties"}
)


@lru_cache(maxsize=1)
def top_level_domains() -> FrozenSet[str]:
    """The delegated ASCII top-level domains (`resources/tlds.txt`, from the Public Suffix List)."""
    text = files("spacy_secner").joinpath("resources", "tlds.txt").read_text(encoding="utf-8")
    return frozenset(line for line in text.splitlines() if line and not line.startswith("#"))


# The defang forms written in square brackets (`[.]`, `[dot]`, `[@]`, `[at]`, `[:]`, `[://]`, `[//]`):
# a `[` that opens one of these is part of an indicator, any other `[` is not.
_BRACKETED_FORMS = sorted(
    {
        bracketed
        for form in DOT_FORMS + AT_FORMS + SCHEME_SEPARATORS + PORT_SEPARATORS
        for bracketed in re.findall(r"\[[^\]]*\]", form)
    },
    key=len,
    reverse=True,
)
_STRAY_BRACKET = rf"\[(?!{alternatives([form[1:] for form in _BRACKETED_FORMS])})"


def ioc_pattern() -> str:
    """A pattern for an indicator of compromise proper: what `cti_iocs` labels, as near as a regex
    gets. It is `INDICATOR_PATTERNS` without group handles (`APT28`) and bulletins, a bare
    `%ENVVAR%`, one-part Unix paths, SHA-512, a lower-case hive without a key, and domains that
    `iocs.classify` rejects: a plain host must be lower case and end in a delegated TLD that is
    no file extension; a defanged one may be in any case and end in any delegated TLD.
    Unanchored; it ends in the guard against trailing punctuation that `indicator_regex` uses.
    """
    tlds = sorted(
        (tld for tld in top_level_domains() if re.fullmatch(r"[a-z]{2,63}", tld)),
        key=len,
        reverse=True,
    )
    hosts_tlds = "|".join(tld for tld in tlds if tld not in FILE_EXTENSION_TLDS)
    defanged_dot = alternatives([form for form in DOT_FORMS if form != "."])
    label = r"[A-Za-z0-9](?:[\w-]*[A-Za-z0-9])?"
    lower_label = r"[a-z0-9](?:[a-z0-9_-]*[a-z0-9])?"
    # Defanged: a defanged dot before the end of the host. Plain: lower case throughout.
    defanged_host = rf"(?=[\w.-]*{defanged_dot})(?:{label}{_DOT})+(?i:{'|'.join(tlds)})(?![\w-])"
    plain_host = rf"(?:{lower_label}\.)+(?:{hosts_tlds})(?![\w-])"
    patterns = {
        name: INDICATOR_PATTERNS[name] for name in ("url", "email", "ipv4", "ipv6", "cve")
    }
    patterns.update(
        {
            "hash": r"(?:[0-9A-Fa-f]{32}|[0-9A-Fa-f]{40}|[0-9A-Fa-f]{64})",
            # A key in any case, or a hive alone in capitals (`HKLM`, not the word `hku`).
            "registry_key": r"(?i:HKEY_[A-Z_]+|HK(?:LM|CU|CR|CC|U):?)(?:\\[^\\\s]+)+\\?"
            r"|(?:HKEY_[A-Z_]+|HK(?:LM|CU|CR|CC|U))\\?",
            "windows_path": r"(?:[A-Za-z]:|\\\\[\w.$-]+|%\w+%)(?:\\[^\\\s]*)+",
            "unix_path": r"~?/[\w.+@-]+(?:/[\w.+@-]+)+/?",
            "domain": rf"(?:{defanged_host}|{plain_host}){_PORT_PATH}",
        }
    )
    return "(?:" + "|".join(patterns.values()) + ")" + _NOT_AFTER_INDICATOR


# DNRTI keeps curly quotes, square brackets and `’s` on words (`“EternalBlue”`, `[1]`,
# `victim’s`), so they are no prefixes or suffixes of ours. Around an indicator they must come off,
# or `cti_iocs` never sees it. spaCy's prefix and suffix rules are plain regexes that see only
# the chunk left so far, and Python's `re` cannot look back over an indicator of any length, so
# both sides are split by prefix rules that look ahead over the rest of the chunk:
_OPENERS = "“‘["
_CLOSERS = r"(?:’s|[”’\]])"
# What may follow the indicator and its closer: more closing punctuation or a possessive.
_TAIL = r"(?:['’]s|[^\w\s])*"
# ...or, after `[indicator`, a Markdown link's target: `](https://evil.com/a)`.
_LINK_TARGET = r"\]\(\S*"


def _ioc_prefixes(ioc: str) -> List[str]:
    """Prefix rules (for `compile_prefix_regex`, which anchors them) that split quotes, brackets
    and possessives from an indicator of compromise `ioc`, and nothing else. Both leave a chunk
    with a bracket that opens no defang form (`http://x/a[1]”`) alone: its `]` closes that
    bracket, not the indicator."""
    return [
        # An opening quote or bracket before an indicator and closing punctuation:
        # `“evil[.]com”,` -> `“` + `evil[.]com”,`; `[evil.com](https://...)` -> `[` + ...
        rf"[{_OPENERS}](?!\S*?{_STRAY_BRACKET})(?={ioc}(?:{_TAIL}|{_LINK_TARGET})$)",
        # An indicator before closing punctuation with a closing quote, bracket or possessive in
        # it, taken off as one prefix so that the closer is left on its own: `evil[.]com”.` ->
        # `evil[.]com` + `”.`, `1.2.3.4’s` -> `1.2.3.4` + `’s`. The first lookahead is a cheap
        # gate: a closer must be in the chunk.
        rf"(?=[^”’\]\s]*[”’\]])(?!\S*?{_STRAY_BRACKET}){ioc}"
        rf"(?=(?:[^\w\s]*?{_CLOSERS}{_TAIL}|{_LINK_TARGET})$)",
    ]


def _ioc_infixes(ioc: str) -> List[str]:
    """Infix rules that split a Markdown link's `(` from the indicator it points to:
    `[here](https://evil.com/a` -> `[here]` + `(` + `https://evil.com/a`."""
    return [rf"(?<=\])\((?={ioc}$)"]


# DNRTI tokens that English's infixes would split. A default infix that splits any of them is
# dropped, and the parts of it DNRTI agrees with come back in `_INFIXES_BACK`.
_INFIX_PROBES = (
    "spear-phishing",
    "tools—EternalRomance",
    "CVE-2012-0158",
    "Exploit.MSWord",
    "CMD/PowerShell",
    "include:AIRBREAK",
    "Google®",
)
_INFIXES_BACK = [
    r"(?<=[0-9])[+*^](?=[0-9-])",  # 2+2, 10^6; not the hyphen of 2012-0158
    rf"(?<=[{ALPHA}0-9])[<>=](?=[{ALPHA}])",  # a=b, a<b; not a:b or a/b
]
# DNRTI tokens that English's prefixes or suffixes would split; in DNRTI these characters
# (almost) never stand alone. A default prefix or suffix that splits any of them is dropped.
_AFFIX_PROBES = (
    "“EternalBlue”",  # curly quotes; DNRTI splits only the straight `"`
    "‘Operation",
    "Sheep’",
    "victim’s",  # curly possessive; DNRTI splits only the straight `'s`
    "$300",  # currency signs
    "US$360",
    "55%",  # the units rule: 55%, 500MB, and also hex-ish names like de4d0t
    "de4d0t",
    "C#",
    "#screen",
    "IOS_",
    "Google®",  # trade marks
    "%TEMP%",
    "[1]",  # square brackets, also the ones in defanged [.] and [:]
)
_EXTRA_SUFFIXES = [
    # A full stop after a lone capital ending a hash or a name (`...D1032B.`, `Ploutus-D.`,
    # `XAGENT.B.`) but not initials (`U.K.`). English only splits it after two capitals.
    r"(?<=[^A-Z.\s][A-Z])\.",
    r"(?<=[A-Za-z0-9]{2}\.[A-Z])\.",
    # ...and after a slash or backslash, so `See http://evil.com/.` keeps its URL and
    # `Dropped into C:\Users\Public\.` its path, and both lose the full stop.
    r"(?<=[/\\])\.",
    # The one curly quote DNRTI splits off: after a comma (`malware,”` -> `malware , ”`).
    r"(?<=,)”",
]


def _infixes(rules: Sequence[str]) -> List[str]:
    kept = [rule for rule in rules if not any(re.search(rule, w) for w in _INFIX_PROBES)]
    return kept + _INFIXES_BACK


def _affixes(rules: Sequence[str], anchored: str) -> List[str]:
    def splits(rule: str) -> bool:
        return any(re.search(anchored.format(rule), w) for w in _AFFIX_PROBES)

    return [rule for rule in rules if not splits(rule)]


def _special_cases(exceptions: Dict[str, List[Dict]]) -> Dict[str, List[Dict]]:
    """One-token special cases made of word characters, dots and apostrophes."""
    word_like = re.compile(r"[\w.'’&]+\Z")
    return {
        text: pieces
        for text, pieces in exceptions.items()
        if len(pieces) == 1 and word_like.match(text)
    }


@registry.tokenizers("spacy-secner.cti_tokenizer.v1")
def cti_tokenizer() -> Callable[[Language], Tokenizer]:
    """Registered tokenizer factory for threat reports.

    Use it in a config as `[nlp.tokenizer] @tokenizers = "spacy-secner.cti_tokenizer.v1"`.
    RETURNS (Callable[[Language], Tokenizer]): Builds the tokenizer from the language's defaults.
    """
    return build_cti_tokenizer


def build_cti_tokenizer(nlp: Language) -> Tokenizer:
    """Build the threat-report tokenizer on top of `nlp.Defaults`' punctuation rules.

    nlp (Language): The pipeline whose vocab and defaults to use.
    RETURNS (Tokenizer): The tokenizer.
    """
    defaults = nlp.Defaults
    ioc = ioc_pattern()
    # Ours first: all prefix rules are anchored at the start, and the first that matches wins.
    prefixes = _ioc_prefixes(ioc) + _affixes(defaults.prefixes or [], "^(?:{})")
    suffixes = _affixes(defaults.suffixes or [], "(?:{})$") + _EXTRA_SUFFIXES
    infixes = _infixes(defaults.infixes or []) + _ioc_infixes(ioc)
    return Tokenizer(
        nlp.vocab,
        rules=_special_cases(defaults.tokenizer_exceptions or {}),
        prefix_search=compile_prefix_regex(prefixes).search,
        suffix_search=compile_suffix_regex(suffixes).search,
        infix_finditer=compile_infix_regex(infixes).finditer,
        token_match=indicator_regex().match,
        url_match=defaults.url_match,
    )


def tokenization_fidelity(
    tokenizer: Tokenizer,
    sentences: Iterable[Tuple[Sequence[str], Sequence[str]]],
    *,
    n_examples: int = 20,
) -> Dict[str, Any]:
    """How well a tokenizer reproduces gold tokens on text rebuilt from them.

    Each sentence's words are joined into raw text with `join_tokens` and tokenized. A gold token
    counts as reproduced when a predicted token has exactly its character span; an entity
    boundary (start or end offset of a gold BIO entity) counts when a predicted token starts or
    ends there.

    tokenizer (Tokenizer): E.g. `nlp.tokenizer`; its vocab also holds the gold docs.
    sentences (Iterable[Tuple[Sequence[str], Sequence[str]]]): `(words, bio_tags)` per sentence,
        tags in valid BIO (as `data.read_sentences` gives them).
    n_examples (int): How many of the most frequent mismatches to list.
    RETURNS (Dict[str, Any]): Counts, the two shares, mismatches by kind, and the most frequent
        mismatches as `{"gold": ..., "predicted": [...], "count": ...}`.
    """
    n_sents = n_tokens = n_exact = n_bounds = n_bounds_ok = 0
    mismatches: Counter = Counter()
    kinds: Counter = Counter()
    for words, tags in sentences:
        text, spaces = join_tokens(words)
        gold = Doc(tokenizer.vocab, words=list(words), spaces=spaces, ents=list(tags))
        pred = tokenizer(text)
        spans = {(t.idx, t.idx + len(t)) for t in pred}
        starts = {start for start, _ in spans}
        ends = {end for _, end in spans}
        for token, (start, end) in zip(words, token_offsets(words, spaces)):
            if (start, end) in spans:
                n_exact += 1
            else:
                overlap = [t for t in pred if t.idx < end and t.idx + len(t) > start]
                inside = all(start <= t.idx and t.idx + len(t) <= end for t in overlap)
                kinds["split" if inside else "merged" if len(overlap) == 1 else "crossing"] += 1
                mismatches[(token, tuple(t.text for t in overlap))] += 1
        for ent in gold.ents:
            n_bounds += 2
            n_bounds_ok += (ent.start_char in starts) + (ent.end_char in ends)
        n_sents += 1
        n_tokens += len(words)
    return {
        "sentences": n_sents,
        "gold_tokens": n_tokens,
        "tokens_exact": n_exact,
        "token_exact_share": n_exact / n_tokens if n_tokens else 0.0,
        "entity_boundaries": n_bounds,
        "boundaries_on_token_edges": n_bounds_ok,
        "boundary_share": n_bounds_ok / n_bounds if n_bounds else 0.0,
        # split: the gold token came out in pieces; merged: inside a longer token; crossing: both.
        "mismatch_kinds": {kind: kinds[kind] for kind in ("split", "merged", "crossing")},
        "top_mismatches": [
            {"gold": gold_token, "predicted": list(pieces), "count": count}
            for (gold_token, pieces), count in mismatches.most_common(n_examples)
        ],
    }
