"""A tokenizer for threat reports: indicators stay whole, words split the way DNRTI's did.

It starts from the language's own settings (`nlp.Defaults` prefixes, suffixes, infixes, special
cases and `url_match`) and changes them in four ways, each checked against DNRTI's tokens:

- `token_match` keeps every indicator in `INDICATOR_PATTERNS` whole. spaCy tries it on a
  whitespace-separated chunk before and after each round of prefix/suffix stripping, so
  `(1.2.3.4),` loses its brackets and comma but never its dots. No pattern may end in sentence
  punctuation, or `Visit 1.2.3.4.` would keep its full stop.
- Infixes: hyphens and dashes no longer split (`spear-phishing`, `CVE-2012-0158`,
  `tools—EternalRomance` are single DNRTI tokens), and neither do `.`, `/` and `:` between
  letters (`Backdoor.APT.Pgift`, `CMD/PowerShell`), which DNRTI keeps whole.
- Prefixes/suffixes: curly quotes and `’s` stay attached (DNRTI splits the straight `"` and
  `'s` but never `“ ” ‘ ’`), and a full stop also comes off after a capital that follows a
  digit or lower-case letter (`...D5D4DA92051A19D1032B.`, `Ploutus-D.`).
- Special cases: only the one-token ones (abbreviations like `U.S.`, `Jan.`) are kept. English's
  contraction rules (`isn't` -> `is n't`, `Shed` -> `She d`) and emoticons (`8)`) go: DNRTI
  keeps contractions whole, and emoticons mostly misfire on bracketed numbers.

Every rule is a plain regex, so `Tokenizer.to_disk` stores it and `spacy.load` restores it;
flags are written inline because only the pattern text is serialized.
"""
import re
from typing import Callable, Dict, List, Optional, Pattern, Sequence

from spacy.lang.char_classes import ALPHA, ALPHA_LOWER
from spacy.language import Language
from spacy.tokenizer import Tokenizer
from spacy.util import compile_infix_regex, compile_prefix_regex, compile_suffix_regex, registry

# A dot as reports write it: plain, or defanged as [.] (.) {.} [dot] (dot).
_DOT = r"(?:\.|\[\.\]|\(\.\)|\{\.\}|\[dot\]|\(dot\))"
_AT = r"(?:@|\[@\]|\[at\]|\(at\))"
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_H16 = r"[0-9A-Fa-f]{1,4}"
_HOST = rf"(?:[A-Za-z0-9](?:[\w-]*[A-Za-z0-9])?{_DOT})+[A-Za-z]{{2,63}}"
_PORT_PATH = r"(?::\d{1,5})?(?:[/?#]\S*)?"

INDICATOR_PATTERNS: Dict[str, str] = {
    # Scheme first, so hxxp://, fxp:// and http[:]// count as URLs whatever follows them.
    "url": r"(?i:h(?:tt|xx)ps?|s?ftps?|fxp|file|wss?|tcp|udp)(?:://|\[://\]|\[:\]//|:\[//\])\S*",
    "email": rf"[\w.+-]+{_AT}{_HOST}",
    # Dotted quad, defanged or not, with an optional CIDR suffix, port and path.
    "ipv4": rf"{_OCTET}(?:{_DOT}{_OCTET}){{3}}(?:/\d{{1,2}})?{_PORT_PATH}",
    # Full eight-group form, or one `::` with up to seven groups around it; optional prefix.
    "ipv6": rf"(?:(?:{_H16}:){{7}}{_H16}|(?=[0-9A-Fa-f:]*[0-9A-Fa-f])"
    rf"(?:{_H16}(?::{_H16}){{0,6}})?::(?:{_H16}(?::{_H16}){{0,6}})?)(?:/\d{{1,3}})?",
    # MD5, SHA-1, SHA-256 (and SHA-512): exactly that many hex digits.
    "hash": r"(?:[0-9A-Fa-f]{32}|[0-9A-Fa-f]{40}|[0-9A-Fa-f]{64}|[0-9A-Fa-f]{128})",
    # Reports write CVE-2017-11882, CVE2017-11882, CVE-2017_1882 and CVE-2018–8440.
    "cve": r"(?i:cve)[-_]?\d{4}[-_–]\d{3,7}",
    "ms_bulletin": r"MS\d{2}-\d{3}",
    # Hive name first, so a key without a drive letter or slash is still recognised.
    "registry_key": r"(?:HKEY_[A-Z_]+|HK(?:LM|CU|CR|CC|U))(?:\\[^\\\s]+)*\\?",
    # Drive letter, UNC share or %ENVVAR%, then at least one backslash-separated part.
    "windows_path": r"(?:[A-Za-z]:|\\\\[\w.$-]+|%\w+%)(?:\\[^\\\s]*)+",
    # From the root or home: /etc/passwd, ~/.ssh/id_rsa, /tmp/.x/run.sh.
    "unix_path": r"~?(?:/[\w.+@-]+)+/?",
    # A bare host, defanged or not, optionally with port and path: evil[.]com/a.php.
    "domain": rf"{_HOST}{_PORT_PATH}",
    # Group handles with digits in them: admin@338, APT28, TG-3390, APT-C-06, UNC2452.
    "actor_handle": r"[A-Za-z][\w.]*@\d+|[A-Z][A-Za-z]*(?:-[A-Z]+)*-?\d+[A-Za-z]?",
}
# No indicator ends in the punctuation a sentence puts after a word, so `evil.com/a.php).`
# fails as a whole, sheds `.` and `)` as suffixes, and then matches.
_NOT_AFTER_INDICATOR = r"""(?<![.,;:!?'"()\[\]{}<>“”‘’])"""


def indicator_regex(patterns: Optional[Dict[str, str]] = None) -> Pattern:
    """Compile indicator patterns into one anchored regex with a named group per class.

    patterns (Optional[Dict[str, str]]): Class name to pattern; `INDICATOR_PATTERNS` by default.
    RETURNS (Pattern): Matches a whole string that is one indicator; `lastgroup` names the class.
    """
    patterns = INDICATOR_PATTERNS if patterns is None else patterns
    body = "|".join(f"(?P<{name}>{pattern})" for name, pattern in patterns.items())
    return re.compile(rf"(?:{body}){_NOT_AFTER_INDICATOR}\Z")


# DNRTI tokens that English's infixes would split: a default infix rule that splits any of them
# is dropped, and the parts of it DNRTI agrees with are added back in `_INFIXES_BACK`.
_KEEP_WHOLE = ("spear-phishing", "tools—EternalRomance", "CVE-2012-0158", "Exploit.MSWord")
_KEEP_WHOLE += ("CMD/PowerShell", "include:AIRBREAK")
_INFIXES_BACK = [
    r"(?<=[0-9])[+*^](?=[0-9-])",  # 2+2, 10^6; not the hyphen of 2012-0158
    rf"(?<=[{ALPHA}0-9])[<>=](?=[{ALPHA}])",  # a=b, a<b; not a:b or a/b
]
# Curly quotes and the curly possessive stay attached: DNRTI never splits them off, though it
# does split the straight `"` and `'s`.
_KEEP_ATTACHED = ("“EternalBlue”", "‘Operation", "Sheep’", "victim’s")
# A full stop after a capital that follows a digit, lower-case letter or hyphen: hashes and
# names like `Ploutus-D` ending a sentence. Two capitals are already covered by English's rules.
_EXTRA_SUFFIXES = [rf"(?<=[0-9{ALPHA_LOWER}\-][A-Z])\."]


def _infixes(rules: Sequence[str]) -> List[str]:
    kept = [r for r in rules if not any(re.search(r, w) for w in _KEEP_WHOLE)]
    return kept + _INFIXES_BACK


def _affixes(rules: Sequence[str], anchor: str) -> List[str]:
    def splits(rule: str, word: str) -> bool:
        return re.search(anchor.format(rule), word) is not None

    return [r for r in rules if not any(splits(r, w) for w in _KEEP_ATTACHED)]


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
    """Registered tokenizer for threat reports: `[nlp.tokenizer] @tokenizers = "spacy-secner.cti_tokenizer.v1"`.

    RETURNS (Callable[[Language], Tokenizer]): Builds the tokenizer from the language's defaults.
    """

    def create_tokenizer(nlp: Language) -> Tokenizer:
        return build_cti_tokenizer(nlp)

    return create_tokenizer


def build_cti_tokenizer(nlp: Language) -> Tokenizer:
    """Build the threat-report tokenizer on top of `nlp.Defaults`' punctuation rules.

    nlp (Language): The pipeline whose vocab and defaults to use.
    RETURNS (Tokenizer): The tokenizer.
    """
    defaults = nlp.Defaults
    prefixes = _affixes(defaults.prefixes or [], "^(?:{})")
    suffixes = _affixes(defaults.suffixes or [], "(?:{})$") + _EXTRA_SUFFIXES
    infixes = _infixes(defaults.infixes or [])
    url_match = defaults.url_match
    return Tokenizer(
        nlp.vocab,
        rules=_special_cases(defaults.tokenizer_exceptions or {}),
        prefix_search=compile_prefix_regex(prefixes).search,
        suffix_search=compile_suffix_regex(suffixes).search,
        infix_finditer=compile_infix_regex(infixes).finditer,
        token_match=indicator_regex().match,
        url_match=url_match,
    )
