"""Turning a tokenized sentence back into the raw text a report would have held.

DNRTI only gives tokens. To see what a tokenizer does with real text, and to give training docs a
`doc.text` that reads like prose, the tokens are joined with normal English spacing:

- No space before closing punctuation: `. , ; : ! ? ) ] } %`, ellipses (`...`, `…`), closing
  quotes (`” ’ »`) and clitics (`'s`, `n't`, `'re`, `'ve`, `'ll`, `'d`, `'m`, with straight or curly
  apostrophes, any case).
- No space after opening brackets and quotes: `( [ { “ ‘ «`.
- Straight quotes (`"` and a lone `'`) say nothing about their direction, so they alternate
  within a sentence: the first opens (no space after), the next closes (no space before).
- Everything else, dashes and slashes included, is separated by one space.

The spaces come back as spaCy's `spaces` flags, so `Doc(vocab, words=words, spaces=spaces).text`
is the joined text, and `token_offsets` gives each token's character span in it.
"""

import re
from typing import List, Sequence, Tuple

_CLOSING = frozenset(".,;:!?)]}%…”’»") | {"...", "..", "?!", "!!", "??"}
_OPENING = frozenset("([{“‘«")
_STRAIGHT_QUOTES = frozenset({'"', "'", "''", "``"})
# Clitics split off by English tokenizers: attach to the word before them.
_CLITIC = re.compile(r"^(?:['’](?:s|re|ve|ll|d|m)|n['’]t)$", re.IGNORECASE)


def join_tokens(words: Sequence[str]) -> Tuple[str, List[bool]]:
    """Join tokens into raw text with normal English spacing (see the module docstring).

    words (Sequence[str]): The tokens of one sentence.
    RETURNS (Tuple[str, List[bool]]): The text, and for each token whether a space follows it
        (spaCy's `spaces`); the last token never has one.
    """
    spaces = [True] * len(words)
    open_quotes = {'"': False, "'": False}
    for i, word in enumerate(words):
        if word == "'" and not open_quotes["'"] and i > 0 and words[i - 1][-1:] in ("s", "S"):
            spaces[i - 1] = False  # plural possessive: "users ' data" -> "users' data"
        elif word in _STRAIGHT_QUOTES:
            kind = "'" if word == "'" else '"'
            opens = not open_quotes[kind]
            open_quotes[kind] = opens
            if opens:
                spaces[i] = False
            elif i > 0:
                spaces[i - 1] = False
        elif word in _OPENING:
            spaces[i] = False
        elif i > 0 and (word in _CLOSING or _CLITIC.match(word)):
            spaces[i - 1] = False
    if spaces:
        spaces[-1] = False
    text = "".join(word + (" " if space else "") for word, space in zip(words, spaces))
    return text, spaces


def token_offsets(words: Sequence[str], spaces: Sequence[bool]) -> List[Tuple[int, int]]:
    """The character span of each token in the text that `words` and `spaces` spell.

    words (Sequence[str]): The tokens.
    spaces (Sequence[bool]): Whether a space follows each token, as from `join_tokens`.
    RETURNS (List[Tuple[int, int]]): `(start, end)` per token, end exclusive.
    """
    if len(words) != len(spaces):
        raise ValueError(f"{len(words)} words but {len(spaces)} space flags")
    offsets = []
    start = 0
    for word, space in zip(words, spaces):
        offsets.append((start, start + len(word)))
        start += len(word) + bool(space)
    return offsets
