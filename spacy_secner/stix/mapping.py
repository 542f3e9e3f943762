"""How DNRTI entities and indicator spans become STIX 2.1 objects: the mapping tables.

`ENTITY_TYPES` and `IOC_TYPES` are the mapping (docs/stix.md has them as tables; a test keeps
the two in step). The resolvers below decide, for one mention, whether it names something a
platform can store: a proper name, a country or region, a CVE id, an ATT&CK technique. Nothing
is resolved by guessing: a mention that no rule or table matches is not exported as an object.
"""

import re
import unicodedata
from functools import lru_cache
from typing import Dict, FrozenSet, List, Optional, Tuple
from urllib.parse import quote

from stix2.v21 import vocab

# DNRTI label -> the STIX 2.1 object type it becomes (None: no object of its own; its mentions
# go into the report's description).
ENTITY_TYPES: Dict[str, Optional[str]] = {
    "HackOrg": "intrusion-set",
    "Tool": "tool",  # "malware" when `is_malware` says so
    "SamFile": "file",  # observable: its name
    "Exp": "vulnerability",  # CVE ids only
    "Area": "location",  # countries and UN regions only
    "Org": "identity",  # identity_class organization
    "Idus": "identity",  # identity_class class, with sectors
    "SecTeam": "identity",  # identity_class organization
    "OffAct": "attack-pattern",  # ATT&CK techniques only
    "Way": "attack-pattern",  # ATT&CK techniques only
    "Time": None,
    "Purp": None,
    "Features": None,
}

# Indicator span label (doc.spans["iocs"]) -> STIX 2.1 observable type.
IOC_TYPES: Dict[str, str] = {
    "ipv4": "ipv4-addr",
    "ipv6": "ipv6-addr",
    "domain": "domain-name",
    "url": "url",
    "email": "email-addr",
    "md5": "file",  # hashes.MD5
    "sha1": "file",  # hashes.SHA-1
    "sha256": "file",  # hashes.SHA-256
    "cve": "vulnerability",
    "file_path": "file",  # name, in a directory
    "registry_key": "windows-registry-key",
}
# Cyber-observable types: no confidence of their own in STIX 2.1 (an indicator carries it).
OBSERVABLE_TYPES: FrozenSet[str] = frozenset(
    "directory domain-name email-addr file ipv4-addr ipv6-addr url windows-registry-key".split()
)
HASH_NAMES: Dict[str, str] = {"md5": "MD5", "sha1": "SHA-1", "sha256": "SHA-256"}

# Mentions that are a kind of thing, not the name of one ("the RAT", "a Trojan").
GENERIC_NAMES: FrozenSet[str] = frozenset(
    "apt apts backdoor backdoors c2 c&c cve dropper exploit exploits implant malware rat rats "
    "ransomware trojan trojans virus worm zero-day".split()
)
# A Tool mention whose last word is one of these names malware ("NetTraveler Trojan").
MALWARE_WORDS: FrozenSet[str] = frozenset(
    "backdoor botnet dropper downloader implant keylogger loader malware rat ransomware "
    "rootkit spyware stealer trojan wiper worm".split()
)
# Families that MITRE ATT&CK lists as software of type "malware" (not "tool"), as written in
# threat reports; matched on the whole mention, case-insensitively. A Tool mention that is
# neither here nor named as malware by its last word is exported as a `tool`.
MALWARE_FAMILIES: FrozenSet[str] = frozenset(
    name.lower()
    for name in (
        "Agent Tesla",
        "BlackEnergy",
        "BONDUPDATER",
        "BitPaymer",
        "Carbanak",
        "Carberp",
        "China Chopper",
        "CHOPSTICK",
        "ComRAT",
        "DarkComet",
        "Derusbi",
        "Downdelph",
        "Dridex",
        "Duqu",
        "Emotet",
        "Flame",
        "gh0st RAT",
        "HAMMERTOSS",
        "Industroyer",
        "Kazuar",
        "KeyBoy",
        "Komplex",
        "LokiBot",
        "NetTraveler",
        "njRAT",
        "NotPetya",
        "Olympic Destroyer",
        "PlugX",
        "Poison Ivy",
        "POWRUNER",
        "QakBot",
        "Regin",
        "Ryuk",
        "Sakula",
        "ShadowPad",
        "Shamoon",
        "Stuxnet",
        "TrickBot",
        "Ursnif",
        "WannaCry",
        "X-Agent",
        "Zebrocy",
        "ZeroT",
    )
)

# Countries as written beside their ISO 3166 names (pycountry's name, common and official
# names are matched exactly, case-insensitively): short forms and the adjectives DNRTI tags
# as Area ("Russian", "North Korean").
COUNTRY_ALIASES: Dict[str, str] = {
    "america": "US",
    "u.s.": "US",
    "u.s.a.": "US",
    "us": "US",
    "usa": "US",
    "uk": "GB",
    "u.k.": "GB",
    "britain": "GB",
    "great britain": "GB",
    "russia": "RU",
    "turkey": "TR",
    "palestine": "PS",
    "macedonia": "MK",
    "brunei": "BN",
    "uae": "AE",
    "korea": "KR",
    "american": "US",
    "british": "GB",
    "chinese": "CN",
    "egyptian": "EG",
    "french": "FR",
    "georgian": "GE",
    "german": "DE",
    "indian": "IN",
    "iranian": "IR",
    "israeli": "IL",
    "italian": "IT",
    "japanese": "JP",
    "kazakh": "KZ",
    "lebanese": "LB",
    "mongolian": "MN",
    "north korean": "KP",
    "pakistani": "PK",
    "palestinian": "PS",
    "russian": "RU",
    "saudi": "SA",
    "south korean": "KR",
    "syrian": "SY",
    "taiwanese": "TW",
    "thai": "TH",
    "turkish": "TR",
    "ukrainian": "UA",
    "vietnamese": "VN",
}
# UN M49 regions of STIX's region-ov, written as words ("south-eastern-asia" is also
# "Southeast Asia"). "Middle East" has no region of its own there and is not exported.
REGION_ALIASES: Dict[str, str] = {
    **{region.replace("-", " "): region for region in vocab.REGION},
    "east asia": "eastern-asia",
    "south asia": "southern-asia",
    "southeast asia": "south-eastern-asia",
    "south east asia": "south-eastern-asia",
    "west asia": "western-asia",
    "north africa": "northern-africa",
    "west africa": "western-africa",
    "east africa": "eastern-africa",
    "north america": "northern-america",
    "latin america": "latin-america-caribbean",
    "east europe": "eastern-europe",
    "west europe": "western-europe",
}
# Words of an Idus mention -> STIX industry-sector-ov.
SECTOR_WORDS: Dict[str, str] = {
    "aerospace": "aerospace",
    "aviation": "aerospace",
    "agriculture": "agriculture",
    "automotive": "automotive",
    "bank": "financial-services",
    "banking": "financial-services",
    "banks": "financial-services",
    "chemical": "chemical",
    "chemicals": "chemical",
    "construction": "construction",
    "defence": "defense",
    "defense": "defense",
    "education": "education",
    "energy": "energy",
    "finance": "financial-services",
    "financial": "financial-services",
    "government": "government",
    "governmental": "government",
    "governments": "government",
    "health": "healthcare",
    "healthcare": "healthcare",
    "high-tech": "technology",
    "hospitality": "hospitality-leisure",
    "insurance": "insurance",
    "manufacturing": "manufacturing",
    "military": "defense",
    "mining": "mining",
    "nuclear": "nuclear",
    "oil": "energy",
    "pharmaceutical": "pharmaceuticals",
    "pharmaceuticals": "pharmaceuticals",
    "retail": "retail",
    "technology": "technology",
    "telecom": "telecommunications",
    "telecommunication": "telecommunications",
    "telecommunications": "telecommunications",
    "transportation": "transportation",
    "universities": "education",
    "university": "education",
    "utilities": "utilities",
}
# MITRE ATT&CK techniques that an OffAct/Way mention names outright, once lower-cased, hyphens
# made spaces, a trailing word of TECHNIQUE_TAIL dropped and a plural made singular:
# phrase -> (technique id, name).
ATTACK_TECHNIQUES: Dict[str, Tuple[str, str]] = {
    "phishing": ("T1566", "Phishing"),
    "spear phishing": ("T1566", "Phishing"),
    "spearphishing": ("T1566", "Phishing"),
    "spearphishing attachment": ("T1566.001", "Spearphishing Attachment"),
    "spearphishing link": ("T1566.002", "Spearphishing Link"),
    "watering hole": ("T1189", "Drive-by Compromise"),
    "drive by compromise": ("T1189", "Drive-by Compromise"),
    "drive by download": ("T1189", "Drive-by Compromise"),
    "strategic web compromise": ("T1189", "Drive-by Compromise"),
    "brute force": ("T1110", "Brute Force"),
    "password spraying": ("T1110.003", "Password Spraying"),
    "credential dumping": ("T1003", "OS Credential Dumping"),
    "supply chain compromise": ("T1195", "Supply Chain Compromise"),
    "supply chain": ("T1195", "Supply Chain Compromise"),
}
TECHNIQUE_TAIL: FrozenSet[str] = frozenset(
    "attack attacks campaign campaigns email emails mail mails message messages tactic tactics "
    "technique techniques".split()
)
# STIX 2.1 wants a registry key's hive spelt out ("HKLM" must not be used).
REGISTRY_HIVES: Dict[str, str] = {
    "hkcc": "HKEY_CURRENT_CONFIG",
    "hkcr": "HKEY_CLASSES_ROOT",
    "hkcu": "HKEY_CURRENT_USER",
    "hklm": "HKEY_LOCAL_MACHINE",
    "hku": "HKEY_USERS",
}
CVE_RE = re.compile(r"CVE-\d{4}-\d{4,}", re.IGNORECASE)


def clean(text: str) -> str:
    """A mention as a name: Unicode NFKC, whitespace runs made one space, trimmed."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def is_name(text: str) -> bool:
    """Whether a mention is a proper name (a capital letter or a digit, or a file name) and
    not a kind of thing ("group", "attackers", "the RAT")."""
    if not text or text.lower() in GENERIC_NAMES:
        return False
    return any(c.isupper() or c.isdigit() for c in text) or bool(re.search(r"\.\w{1,5}$", text))


def is_malware(name: str) -> bool:
    """Whether a Tool mention names malware (see MALWARE_FAMILIES and MALWARE_WORDS)."""
    words = name.lower().split()
    return name.lower() in MALWARE_FAMILIES or (len(words) > 1 and words[-1] in MALWARE_WORDS)


def cve_id(text: str) -> Optional[str]:
    """The CVE id a mention is (upper-cased), or None."""
    match = CVE_RE.fullmatch(text.strip())
    return match.group(0).upper() if match else None


def registry_key(key: str) -> str:
    """A registry key with its hive's full name (`HKLM\\Run` -> `HKEY_LOCAL_MACHINE\\Run`)."""
    hive, sep, rest = key.partition("\\")
    return REGISTRY_HIVES.get(hive.lower(), hive) + sep + rest


def sectors(text: str) -> List[str]:
    """The industry-sector-ov values the words of an Idus mention name, in order."""
    found = [SECTOR_WORDS.get(word) for word in text.lower().split()]
    return list(dict.fromkeys(s for s in found if s))


def technique(text: str) -> Optional[Tuple[str, str]]:
    """(ATT&CK id, technique name) an OffAct/Way mention names, or None."""
    words = text.lower().replace("-", " ").split()
    if len(words) > 1 and words[-1] in TECHNIQUE_TAIL:
        words = words[:-1]
    phrase = " ".join(words)
    # A plural names the same technique ("watering holes").
    return ATTACK_TECHNIQUES.get(phrase) or ATTACK_TECHNIQUES.get(phrase.removesuffix("s"))


def location(text: str) -> Optional[Tuple[str, Dict[str, str]]]:
    """(name, properties) of the STIX location an Area mention names: {"country": ISO 3166-1
    alpha-2} or {"region": region-ov}; None when it names neither."""
    key = text.lower()
    if key in REGION_ALIASES:
        region = REGION_ALIASES[key]
        return region.replace("-", " ").title(), {"region": region}
    code = COUNTRY_ALIASES.get(key) or _country_names().get(key)
    if code is None:
        return None
    return _country_display_names()[code], {"country": code}


@lru_cache(maxsize=1)
def _country_names() -> Dict[str, str]:
    import pycountry

    names = {}
    for country in pycountry.countries:
        for attr in ("name", "common_name", "official_name"):
            value = getattr(country, attr, None)
            if value:
                names[value.lower()] = country.alpha_2
    return names


@lru_cache(maxsize=1)
def _country_display_names() -> Dict[str, str]:
    import pycountry

    return {c.alpha_2: getattr(c, "common_name", None) or c.name for c in pycountry.countries}


# A URL's scheme and separator (`http://`); the indicator spans refang theirs.
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_LONE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
# What each part of a URI may hold as it is (RFC 3986: unreserved characters, which `quote`
# always keeps, sub-delimiters, and the delimiters allowed in that part); `%` is kept as the
# start of an escape (lone ones are escaped first).
_AUTHORITY_SAFE = "!$&'()*+,;=:@[]%"
_PATH_SAFE = "!$&'()*+,;=:@/%"
_QUERY_SAFE = _PATH_SAFE + "?"
_PORT = re.compile(r":\d{1,5}$")
_HOST_LABEL = re.compile(r"[^\W_](?:(?:[^\W_]|-){0,61}[^\W_])?")
_IPV4 = re.compile(r"(?:\d{1,3}\.){3}\d{1,3}(?:/\d{1,2})?")


def uri(url: str) -> Optional[str]:
    """A URL as a URI (RFC 3986), as STIX's `url` value must be: characters a URI cannot hold
    where they stand are percent-encoded, as browsers do (`|` -> `%7C`, a lone `%` -> `%25`, a
    second `#` -> `%23`, non-ASCII as UTF-8). None for a URL without a scheme (`evil.com/a.php`):
    that is no URI, and no scheme is guessed for it."""
    match = _URL_SCHEME.match(url)
    if match is None:
        return None
    rest = _LONE_PERCENT.sub("%25", url[match.end() :])
    split = re.search(r"[/?#]", rest)
    authority, tail = (rest[: split.start()], rest[split.start() :]) if split else (rest, "")
    tail, hash_mark, fragment = tail.partition("#")
    path, question_mark, query = tail.partition("?")
    if not authority.isascii():
        authority = _idna_authority(authority)
    return "".join(
        (
            match.group(0),
            quote(authority, safe=_AUTHORITY_SAFE),
            quote(path, safe=_PATH_SAFE),
            question_mark,
            quote(query, safe=_QUERY_SAFE),
            hash_mark,
            quote(fragment, safe=_QUERY_SAFE),
        )
    )


def _idna_authority(authority: str) -> str:
    """An authority with its host name in IDNA's ASCII form (`пример.рф` ->
    `xn--e1afmkfd.xn--p1ai`), as DNS and platforms hold it; as it was if IDNA rejects it."""
    userinfo, at, host_port = authority.rpartition("@")
    name, colon, port = host_port.partition(":")
    try:
        name = name.encode("idna").decode("ascii")
    except UnicodeError:
        return authority
    return userinfo + at + name + colon + port


def host(value: str) -> str:
    """The host of an indicator's `host[:port][/path?query]` (`evil.com:8080/a` -> `evil.com`);
    an address keeps its CIDR suffix (`10.0.0.0/8`)."""
    if not _IPV4.fullmatch(value):
        value = re.split(r"[/?#]", value, maxsplit=1)[0]
    return _PORT.sub("", value)


def is_ipv4(value: str) -> bool:
    """Whether a host is a dotted-quad address (with an optional CIDR suffix)."""
    return bool(_IPV4.fullmatch(value))


def is_hostname(name: str) -> bool:
    """Whether a domain name is a host name STIX's `domain-name` accepts: labels of letters
    (any script), digits and inner hyphens, at most 63 characters each and 253 in all (no `_`,
    which DNS records may hold but host names may not)."""
    labels = name.split(".")
    return len(name) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)
