"""Joining tokens back into raw text with normal English spacing."""

import pytest
import spacy
from spacy.tokens import Doc

from spacy_secner.detokenize import join_tokens, token_offsets


@pytest.mark.parametrize(
    "words,text",
    [
        (["Visit", "1.2.3.4", "."], "Visit 1.2.3.4."),
        (
            ["APT28", ",", "APT29", ";", "Turla", ":", "done", "!", "why", "?"],
            "APT28, APT29; Turla: done! why?",
        ),
        (
            ["the", "tool", "(", "X-Agent", ")", "uses", "[", "1", "]", "{", "a", "}"],
            "the tool (X-Agent) uses [1] {a}",
        ),
        (["rose", "by", "50", "%", "..."], "rose by 50%..."),
        (["the", "group", "'s", "tools"], "the group's tools"),
        (
            ["it", "is", "n't", ",", "we", "'ve", "I", "'m", "they", "'re"],
            "it isn't, we've I'm they're",
        ),
        (
            ["the", "Group", "’s", "“", "EternalBlue", "”", "and", "‘", "x", "’"],
            "the Group’s “EternalBlue” and ‘x’",
        ),
        (
            ["named", '"', "Rocket", "Kitten", '"', "and", '"', "X", '"', "."],
            'named "Rocket Kitten" and "X".',
        ),
        (["dubbed", "'", "Rocket", "Kitten", "'", ","], "dubbed 'Rocket Kitten',"),
        (
            ["the", "users", "'", "data", "and", "BlackOasis", "'", "aims"],
            "the users' data and BlackOasis' aims",
        ),
        (["a", "–", "b", "—", "c", "-", "d", "/", "e"], "a – b — c - d / e"),
    ],
)
def test_join_tokens_spacing(words, text):
    joined, spaces = join_tokens(words)
    assert joined == text
    assert len(spaces) == len(words)
    assert spaces[-1] is False


def test_join_tokens_empty_and_single():
    assert join_tokens([]) == ("", [])
    assert join_tokens(["APT28"]) == ("APT28", [False])
    assert join_tokens(["("]) == ("(", [False])


def test_join_tokens_gives_spacy_spaces():
    words = ["Kaspersky", "believes", "Shamoon", "(", "a", "wiper", ")", "is", "back", "."]
    text, spaces = join_tokens(words)
    doc = Doc(spacy.blank("en").vocab, words=words, spaces=spaces)
    assert doc.text == text == "Kaspersky believes Shamoon (a wiper) is back."


def test_token_offsets_point_at_each_token():
    words = ["He", "said", '"', "hxxp://evil[.]com/a.php", '"', "(", "twice", ")", "."]
    text, spaces = join_tokens(words)
    offsets = token_offsets(words, spaces)
    assert [text[start:end] for start, end in offsets] == words
    assert offsets[0] == (0, 2)
    assert offsets[-1] == (len(text) - 1, len(text))


def test_token_offsets_checks_lengths():
    with pytest.raises(ValueError):
        token_offsets(["a", "b"], [True])
