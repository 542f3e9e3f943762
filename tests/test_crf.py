"""The torch modules and BIO helpers: constrained decoding, likelihood, packing, tag conversion."""
import itertools
import random
from typing import List, Sequence

import numpy
import pytest
import torch
from seqeval.metrics.sequence_labeling import get_entities
from spacy.training import iob_to_biluo

from spacy_secner import crf_numpy
from spacy_secner.bio import bio_tags, biluo_to_bio, entity_bounds, repair_bio
from spacy_secner.pytorch_bilstm_crf import (
    BIOCRF,
    BiLSTMEmitter,
    bio_allowed_transitions,
    lengths_to_mask,
)

TAGS = bio_tags(["HackOrg", "Tool"])  # O, B-HackOrg, I-HackOrg, B-Tool, I-Tool


def valid_transition(prev: str, tag: str) -> bool:
    """BIO: `I-X` only continues `B-X` or `I-X` (an independent check, not the package's)."""
    return not tag.startswith("I-") or (prev != "O" and prev[2:] == tag[2:])


def bio_errors(tags: Sequence[str]) -> List[str]:
    """Every invalid BIO step in a tag sequence, including a start with `I-`."""
    errors = []
    for i, tag in enumerate(tags):
        if i == 0 and tag.startswith("I-"):
            errors.append(f"starts with {tag}")
        elif i > 0 and not valid_transition(tags[i - 1], tag):
            errors.append(f"{tags[i - 1]} -> {tag} at {i}")
    return errors


def random_bio_sequence(rng: random.Random, labels: Sequence[str], length: int) -> List[str]:
    """Any sequence over the tag set, well formed or not."""
    return [rng.choice(bio_tags(labels)) for _ in range(length)]


def test_bio_tags_order():
    assert bio_tags(["HackOrg", "Tool"]) == ["O", "B-HackOrg", "I-HackOrg", "B-Tool", "I-Tool"]
    assert bio_tags([]) == ["O"]


def test_bio_allowed_transitions_exact():
    start, trans, end = bio_allowed_transitions(TAGS)
    idx = {tag: i for i, tag in enumerate(TAGS)}
    assert start.tolist() == [True, True, False, True, False]
    assert end.tolist() == [True] * 5
    forbidden = {
        ("O", "I-HackOrg"),
        ("O", "I-Tool"),
        ("B-Tool", "I-HackOrg"),
        ("I-Tool", "I-HackOrg"),
        ("B-HackOrg", "I-Tool"),
        ("I-HackOrg", "I-Tool"),
    }
    for prev, tag in itertools.product(TAGS, TAGS):
        assert bool(trans[idx[prev], idx[tag]]) == ((prev, tag) not in forbidden), (prev, tag)


@pytest.mark.parametrize("n_labels", [1, 3, 6])
def test_bio_allowed_transitions_match_definition(n_labels):
    tags = bio_tags([f"L{i}" for i in range(n_labels)])
    start, trans, _ = bio_allowed_transitions(tags)
    for i, j in itertools.product(range(len(tags)), range(len(tags))):
        assert bool(trans[i, j]) == valid_transition(tags[i], tags[j]), (tags[i], tags[j])
    for j, tag in enumerate(tags):
        assert bool(start[j]) == (not tag.startswith("I-"))


def _decode(crf: BIOCRF, emissions: torch.Tensor, lengths: List[int]) -> List[List[int]]:
    mask = lengths_to_mask(torch.tensor(lengths), emissions.shape[1])
    with torch.no_grad():
        out = crf(emissions, mask)
    paths = []
    for row, n in zip(out.tolist(), lengths):
        assert all(t >= 0 for t in row[:n]) and all(t == -1 for t in row[n:])
        paths.append(row[:n])
    return paths


def _set_learned_scores(crf: BIOCRF, start: torch.Tensor, trans: torch.Tensor, end: torch.Tensor):
    """Set the CRF's learned scores (under the constraint's parametrization, if any)."""
    values = {"start_transitions": start, "transitions": trans, "end_transitions": end}
    with torch.no_grad():
        for name, param in crf.named_parameters():
            key = name.replace(".original", "").split(".")[-1]
            param.copy_(values[key])


def test_constrained_viterbi_never_decodes_invalid_bio():
    """500 random emission matrices under 100 random CRFs, with large emissions and learned
    transitions that (in half of them) favour invalid moves: every constrained path is BIO."""
    gen = torch.Generator().manual_seed(0)
    rng = random.Random(0)
    n_paths = 0
    for trial in range(100):
        tags = bio_tags([f"L{i}" for i in range(rng.randint(1, 5))])
        n = len(tags)
        crf = BIOCRF(tags, constrained=True)
        scale = rng.choice([1.0, 10.0, 100.0])
        start, trans, end = (torch.randn(shape, generator=gen) * scale for shape in [n, (n, n), n])
        if trial % 2:
            # Make every invalid move the best one, before the constraint applies.
            allowed_start, allowed_trans, _ = bio_allowed_transitions(tags)
            start = start + (~allowed_start).float() * 1000.0
            trans = trans + (~allowed_trans).float() * 1000.0
        _set_learned_scores(crf, start, trans, end)
        lengths = [rng.randint(1, 12) for _ in range(5)]
        emissions = torch.randn(len(lengths), max(lengths), n, generator=gen) * 10.0
        if trial % 3 == 0:
            emissions[..., [i for i, t in enumerate(tags) if t.startswith("I-")]] += 50.0
        for path in _decode(crf, emissions, lengths):
            seq = [tags[i] for i in path]
            assert not bio_errors(seq), (trial, seq)
            n_paths += 1
    assert n_paths == 500


def test_unconstrained_viterbi_does_decode_invalid_bio():
    """The property above is not vacuous: without the constraint, the same kind of scores give
    invalid paths, and the constrained CRF with the same learned scores never does."""
    gen = torch.Generator().manual_seed(1)
    allowed_start, allowed_trans, _ = bio_allowed_transitions(TAGS)
    scores = ((~allowed_start).float() * 5.0, (~allowed_trans).float() * 5.0, torch.zeros(5))
    free = BIOCRF(TAGS, constrained=False)
    constrained = BIOCRF(TAGS, constrained=True)
    _set_learned_scores(free, *scores)
    _set_learned_scores(constrained, *scores)
    emissions = torch.randn(20, 8, len(TAGS), generator=gen) * 10.0
    lengths = [8] * 20
    free_paths = _decode(free, emissions, lengths)
    assert sum(bool(bio_errors([TAGS[i] for i in p])) for p in free_paths) > 0
    for path in _decode(constrained, emissions, lengths):
        assert not bio_errors([TAGS[i] for i in path])


def test_constrained_crf_puts_all_probability_on_valid_sequences():
    torch.manual_seed(0)
    crf = BIOCRF(TAGS, constrained=True)
    with torch.no_grad():
        for param in crf.parameters():
            param.normal_(0, 3.0)
    length = 4
    emissions = torch.randn(1, length, len(TAGS)) * 3.0
    mask = torch.ones(1, length, dtype=torch.bool)
    valid_mass = 0.0
    total_mass = 0.0
    for seq in itertools.product(range(len(TAGS)), repeat=length):
        tags = torch.tensor([seq])
        with torch.no_grad():
            prob = float((-crf(emissions, mask, tags, per_sequence=True)).exp())
        total_mass += prob
        if not bio_errors([TAGS[i] for i in seq]):
            valid_mass += prob
        else:
            assert prob < 1e-100
    assert total_mass == pytest.approx(1.0, abs=1e-4)
    assert valid_mass == pytest.approx(1.0, abs=1e-4)


def test_crf_loss_is_mean_nll_and_differentiable():
    torch.manual_seed(0)
    crf = BIOCRF(TAGS, constrained=True)
    emissions = torch.randn(2, 3, len(TAGS), requires_grad=True)
    mask = lengths_to_mask(torch.tensor([3, 2]), 3)
    gold = torch.tensor([[1, 2, 0], [3, 4, 0]])
    loss = crf(emissions, mask, gold)
    expected = crf(emissions, mask, gold, per_sequence=True).mean()
    assert loss.item() == pytest.approx(expected.item())
    assert loss.item() > 0
    (d_emissions,) = torch.autograd.grad(loss, emissions)
    # Padding gets no gradient.
    assert torch.all(d_emissions[1, 2] == 0)
    assert float(d_emissions.abs().sum()) > 0


def test_crf_loss_reads_each_constrained_weight_once_with_the_same_result(monkeypatch):
    """The loss computes the constrained transitions once per call (pytorch-crf reads them at
    every step): the same loss and gradients as reading them each time."""
    import contextlib

    from torch.nn.utils import parametrize

    from spacy_secner.pytorch_bilstm_crf import AddForbiddenScore

    torch.manual_seed(0)
    crf = BIOCRF(TAGS, constrained=True)
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_()
    emissions = torch.randn(3, 6, len(TAGS))
    mask = lengths_to_mask(torch.tensor([6, 4, 1]), 6)
    gold = torch.tensor([[1, 2, 0, 3, 4, 4], [3, 0, 1, 2, 0, 0], [0, 0, 0, 0, 0, 0]])
    results = []
    for cached in (True, False):
        if not cached:
            monkeypatch.setattr(parametrize, "cached", contextlib.nullcontext)
        calls = []
        forward = AddForbiddenScore.forward
        monkeypatch.setattr(
            AddForbiddenScore, "forward", lambda self, x: (calls.append(1), forward(self, x))[1]
        )
        crf.zero_grad()
        loss = crf(emissions, mask, gold)
        loss.backward()
        grads = {name: p.grad.clone() for name, p in crf.named_parameters()}
        results.append((loss.item(), grads, len(calls)))
        monkeypatch.setattr(AddForbiddenScore, "forward", forward)
    (cached_loss, cached_grads, cached_calls), (loss, grads, calls) = results
    assert cached_calls == 3 and calls > 3 * cached_calls
    assert cached_loss == pytest.approx(loss, rel=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(cached_grads[name], grad, rtol=1e-5, atol=1e-6)


def test_crf_state_dict_holds_only_learned_weights():
    state = BIOCRF(TAGS, constrained=True).state_dict()
    assert not any("penalty" in key for key in state)
    assert {tuple(v.shape) for v in state.values()} == {(5,), (5, 5)}


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_emitter_output_does_not_depend_on_padding(depth):
    torch.manual_seed(0)
    emitter = BiLSTMEmitter(6, 5, hidden_size=4, depth=depth, dropout=0.0).eval()
    lengths = [3, 11, 1]
    X = torch.randn(len(lengths), 11, 6)
    for i, n in enumerate(lengths):
        X[i, n:] = 1000.0  # garbage in the padding must not leak into real positions
    with torch.no_grad():
        batched = emitter(X, torch.tensor(lengths))
        for i, n in enumerate(lengths):
            alone = emitter(X[i : i + 1, :n], torch.tensor([n]))
            assert batched.shape == (3, 11, 5)
            numpy.testing.assert_allclose(batched[i, :n].numpy(), alone[0].numpy(), atol=1e-6)


def test_biluo_to_bio():
    assert biluo_to_bio(["U-Tool", "O", "B-Org", "I-Org", "L-Org", "-", None, "B-Time", "L-Time"]) == [
        "B-Tool",
        "O",
        "B-Org",
        "I-Org",
        "I-Org",
        "O",
        "O",
        "B-Time",
        "I-Time",
    ]
    assert biluo_to_bio([]) == []


def test_biluo_to_bio_inverts_spacy_iob_to_biluo():
    rng = random.Random(0)
    for _ in range(500):
        bio = repair_bio(random_bio_sequence(rng, ["A", "B"], rng.randint(0, 12)))
        assert biluo_to_bio(iob_to_biluo(bio)) == bio


def test_repair_bio_matches_seqeval_default_mode():
    rng = random.Random(0)
    changed = 0
    for _ in range(3000):
        raw = random_bio_sequence(rng, ["A", "B", "C"], rng.randint(0, 15))
        repaired = repair_bio(raw)
        assert len(repaired) == len(raw)
        assert not bio_errors(repaired), (raw, repaired)
        assert get_entities(repaired) == get_entities(raw), (raw, repaired)
        assert repair_bio(repaired) == repaired
        changed += repaired != raw
    assert changed > 1000  # the sequences did need repairing


def test_repair_bio_examples():
    assert repair_bio(["I-A", "I-A", "O", "I-B", "B-A", "I-B"]) == [
        "B-A",
        "I-A",
        "O",
        "B-B",
        "B-A",
        "B-B",
    ]
    valid = ["B-A", "I-A", "B-A", "O", "B-B", "I-B"]
    assert repair_bio(valid) == valid


def test_span_confidence_is_the_exact_marginal(trained_cnn_nlp):
    """Z'/Z from the clamped forward pass equals brute-force enumeration of every sequence."""
    import itertools

    from spacy_secner.layers import crf_decode, crf_span_confidence
    from spacy_secner.bio import entity_bounds

    nlp = trained_cnn_nlp
    ner = nlp.get_pipe("ner_crf")
    model, tags = ner.model, ner.tags
    doc = nlp.make_doc("APT28 used X-Agent")
    scores = model.predict([doc])
    # Soften the scores so the marginal is far from 0 and 1 and the check is sharp.
    scores = [scores[0] * 0.05]
    path = crf_decode(model, scores)[0]
    (confidences,) = crf_span_confidence(model, scores, [path])
    bounds = entity_bounds([tags[i] for i in path.tolist()])
    assert len(confidences) == len(bounds) >= 1
    n = len(doc)
    sequences = [list(seq) for seq in itertools.product(range(len(tags)), repeat=n)]
    crf = model.get_ref("decoder")
    nll = crf.predict(([scores[0]] * len(sequences), [numpy.asarray(s) for s in sequences], True))
    probs = numpy.exp(-numpy.asarray(nll, dtype="float64"))
    assert abs(probs.sum() - 1.0) < 1e-3
    for (start, end), confidence in zip(bounds, confidences):
        agree = [
            p for seq, p in zip(sequences, probs)
            if seq[start:end] == path.tolist()[start:end]
            and (end == n or tags[seq[end]] != "I-" + tags[path[start]][2:])
        ]
        assert 0.0 < confidence < 1.0
        assert abs(sum(agree) - confidence) < 1e-3


def test_confidence_on_entities(trained_cnn_nlp):
    doc = trained_cnn_nlp("APT28 used X-Agent against NATO in 2016 .")
    assert doc.ents
    assert all(0.0 < ent._.confidence <= 1.0 for ent in doc.ents)


def test_reduce_first_or_zeros_matches_thinc_and_handles_empty_tokens():
    from thinc.api import Ragged, reduce_first

    from spacy_secner.architectures import reduce_first_or_zeros

    X = numpy.random.default_rng(0).random((7, 4)).astype("f")
    full = Ragged(X, numpy.asarray([2, 3, 2], dtype="i"))
    ours = reduce_first_or_zeros()
    numpy.testing.assert_array_equal(ours.predict(full), reduce_first().predict(full))
    # Whitespace tokens have no wordpieces: zeros out, no gradient in.
    gappy = Ragged(X, numpy.asarray([2, 0, 3, 0, 2], dtype="i"))
    Y, backprop = ours(gappy, is_train=True)
    assert Y.shape == (5, 4)
    numpy.testing.assert_array_equal(Y[[1, 3]], 0)
    numpy.testing.assert_array_equal(Y[[0, 2, 4]], X[[0, 2, 5]])
    dX = backprop(numpy.ones_like(Y)).dataXd
    numpy.testing.assert_array_equal(dX.sum(axis=1), [4, 0, 4, 0, 0, 4, 0])


@pytest.mark.parametrize("constrained", [True, False])
def test_span_log_probs_match_enumeration_for_inner_spans(constrained):
    """Spans at the start, middle and end of padded sequences, against every tag sequence."""
    torch.manual_seed(0)
    tags = ["O", "B-A", "I-A", "B-B", "I-B"]
    crf = BIOCRF(tags, constrained=constrained)
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_(0, 1)
    lengths = torch.tensor([6, 4])
    emissions = torch.randn(2, 6, len(tags))
    mask = lengths_to_mask(lengths, 6)
    path = torch.tensor([[1, 2, 0, 3, 4, 1], [0, 3, 0, 1, 0, 0]])
    # (sequence, start, end, barred next tag)
    spans = torch.tensor([[0, 0, 2, 2], [0, 3, 5, 4], [0, 5, 6, 2], [1, 1, 2, 4], [1, 3, 4, 2]])
    with torch.no_grad():
        got = crf(emissions, mask, path, spans=spans).exp()
    for (seq, start, end, barred), p in zip(spans.tolist(), got.tolist()):
        n = int(lengths[seq])
        every = torch.tensor(list(itertools.product(range(len(tags)), repeat=n)))
        with torch.no_grad():
            probs = (-crf(emissions[seq : seq + 1, :n].expand(len(every), -1, -1),
                          mask[seq : seq + 1, :n].expand(len(every), -1), every,
                          per_sequence=True)).exp()
        agrees = (every[:, start:end] == path[seq, start:end]).all(1)
        if end < n:
            agrees &= every[:, end] != barred
        total, agree = float(probs.sum()), float(probs[agrees].sum())
        assert total == pytest.approx(1.0, abs=1e-4)
        assert p == pytest.approx(agree, abs=1e-5)


@pytest.mark.parametrize("constrained", [True, False])
def test_batched_viterbi_equals_pytorch_crf_decode(constrained):
    """Our batched trace-back gives pytorch-crf's own paths, padding and all."""
    torch.manual_seed(2)
    tags = bio_tags(["A", "B", "C"])
    crf = BIOCRF(tags, constrained=constrained)
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_(0, 2)
    for n_steps in (1, 2, 9, 33):
        lengths = torch.randint(1, n_steps + 1, (17,))
        lengths[0] = n_steps
        mask = lengths_to_mask(lengths, n_steps)
        emissions = torch.randn(17, n_steps, len(tags)) * 3
        with torch.no_grad():
            ours = crf(emissions, mask)
            theirs = crf.crf.decode(emissions, mask=mask)
        for i, path in enumerate(theirs):
            assert ours[i, : len(path)].tolist() == path
            assert (ours[i, len(path) :] == -1).all()


# --- the vectorised decoder against the implementation it replaced ---------------------------


def reference_viterbi(crf: BIOCRF, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The batched Viterbi of spacy-secner 0.1.0: back-pointers kept at every step."""
    inner = crf.crf
    trans = inner.transitions
    n_seq, n_steps, _ = emissions.shape
    score = inner.start_transitions + emissions[:, 0]
    history = []
    for t in range(1, n_steps):
        step, best_prev = (score.unsqueeze(2) + trans + emissions[:, t].unsqueeze(1)).max(1)
        score = torch.where(mask[:, t, None], step, score)
        history.append(best_prev)
    lengths = mask.long().sum(1)
    tag = (score + inner.end_transitions).argmax(1)
    paths = torch.full((n_seq, n_steps), -1, dtype=torch.long)
    rows = torch.arange(n_seq)
    for t in range(n_steps - 1, -1, -1):
        inside = t < lengths
        paths[:, t] = torch.where(inside, tag, paths[:, t])
        if t:
            tag = torch.where(inside, history[t - 1][rows, tag], tag)
    return paths


def reference_span_log_probs(crf: BIOCRF, emissions, mask, tags, spans) -> torch.Tensor:
    """The span log-probabilities of spacy-secner 0.1.0: forward and backward in log space."""
    inner = crf.crf
    e = emissions.double()
    start, trans, end = (
        inner.start_transitions.double(),
        inner.transitions.double(),
        inner.end_transitions.double(),
    )
    n_seq, n_steps, _ = e.shape
    lengths = mask.long().sum(1)
    alphas = [start + e[:, 0]]
    for t in range(1, n_steps):
        step = torch.logsumexp(alphas[-1].unsqueeze(2) + trans, dim=1) + e[:, t]
        alphas.append(torch.where(mask[:, t, None], step, alphas[-1]))
    alpha = torch.stack(alphas, 1)
    betas = [end.expand(n_seq, -1)]
    for t in range(n_steps - 2, -1, -1):
        step = torch.logsumexp(trans + (e[:, t + 1] + betas[0]).unsqueeze(1), dim=2)
        is_last = (lengths - 1 == t)[:, None]
        betas.insert(0, torch.where(is_last, end.expand(n_seq, -1), step))
    beta = torch.stack(betas, 1)
    rows = torch.arange(n_seq)
    log_z = torch.logsumexp(alpha[rows, lengths - 1] + end, dim=1)
    path = tags.clamp(min=0)
    own = e.gather(2, path.unsqueeze(2)).squeeze(2)
    own[:, 1:] += trans[path[:, :-1], path[:, 1:]]
    cumulated = own.cumsum(1)
    seq, first, stop, barred = spans.unbind(1)
    last = stop - 1
    first_tag, last_tag = path[seq, first], path[seq, last]
    inner_score = e[seq, first, first_tag] + cumulated[seq, last] - cumulated[seq, first]
    into = torch.logsumexp(alpha[seq, (first - 1).clamp(min=0)] + trans[:, first_tag].T, dim=1)
    left = torch.where(first == 0, start[first_tag], into)
    after = stop.clamp(max=n_steps - 1)
    out_of = trans[last_tag] + e[seq, after] + beta[seq, after]
    out_of = out_of.scatter(1, barred.unsqueeze(1), float("-inf"))
    right = torch.where(stop == lengths[seq], end[last_tag], torch.logsumexp(out_of, dim=1))
    return left + inner_score + right - log_z[seq]


def random_crf_batch(seed: int, constrained: bool, n_labels: int = 13, scale: float = 3.0):
    """A CRF with random learned scores and a batch of random emissions of mixed lengths."""
    gen = torch.Generator().manual_seed(seed)
    tags = bio_tags([f"L{i}" for i in range(n_labels)])
    crf = BIOCRF(tags, constrained=constrained)
    k = len(tags)
    _set_learned_scores(crf, *(torch.randn(shape, generator=gen) for shape in [k, (k, k), k]))
    lengths = torch.randint(1, 50, (37,), generator=gen)
    lengths[:3] = torch.tensor([1, 2, 60])
    mask = lengths_to_mask(lengths, int(lengths.max()))
    emissions = torch.randn(len(lengths), int(lengths.max()), k, generator=gen) * scale
    return tags, crf, emissions, mask, lengths


def reference_entities(tags, paths, lengths):
    """(sequence, start, end, start tag) of each entity, with the Python reading of 0.1.0."""
    rows = []
    for i, path in enumerate(paths.tolist()):
        path = path[: int(lengths[i])]
        for start, end in entity_bounds([tags[t] for t in path]):
            rows.append([i, start, end, path[start]])
    return rows


@pytest.mark.parametrize("numpy_on_cpu", [True, False], ids=["numpy", "torch"])
@pytest.mark.parametrize("constrained", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fused_decoder_equals_the_reference_and_pytorch_crf(constrained, seed, numpy_on_cpu):
    """Paths, entities and log-probabilities of `annotate` (one fused pass, probability space,
    back-pointers recomputed on the path only) against the loop it replaced and against
    pytorch-crf's own decode, with 13 labels (27 tags) as in DNRTI; with the passes in numpy
    (the CPU's) and in torch (the GPU's)."""
    tags, crf, emissions, mask, lengths = random_crf_batch(seed, constrained)
    crf.numpy_on_cpu = numpy_on_cpu
    with torch.no_grad():
        expected = reference_viterbi(crf, emissions, mask)
        theirs = crf.crf.decode(emissions, mask=mask)
        paths, found, log_probs = crf(emissions, mask, entities=True, confidence=True)
        assert torch.equal(crf(emissions, mask), expected)
    assert torch.equal(paths, expected)
    assert [paths[i, : len(p)].tolist() for i, p in enumerate(theirs)] == theirs
    rows = reference_entities(tags, expected, lengths)
    assert found.tolist() == rows and len(rows) > 50
    inside = {i: tags.index("I-" + tag[2:]) for i, tag in enumerate(tags) if tag != "O"}
    spans = torch.tensor([[i, s, e, inside[t]] for i, s, e, t in rows])
    with torch.no_grad():
        reference = reference_span_log_probs(crf, emissions, mask, expected, spans)
        direct = crf(emissions, mask, expected, spans=spans)
    assert log_probs.dtype == torch.float64
    torch.testing.assert_close(log_probs, reference, rtol=0, atol=1e-9)
    torch.testing.assert_close(direct, reference, rtol=0, atol=1e-9)
    # Without confidences: the same paths and entities, no probabilities.
    with torch.no_grad():
        paths2, found2, none = crf(emissions, mask, entities=True, confidence=False)
    assert torch.equal(paths2, paths) and torch.equal(found2, found) and len(none) == 0


@pytest.mark.parametrize("ties", [False, True], ids=["random", "ties"])
@pytest.mark.parametrize("constrained", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_followed_back_pointers_give_the_recomputed_paths(monkeypatch, ties, constrained, seed):
    """The numpy Viterbi keeps its back-pointers for a batch of one or two sequences and
    recomputes the ones on the path for more: the same paths, entities and log-probabilities
    either way, and pytorch-crf's paths, ties included (whole-number scores)."""
    tags, crf, emissions, mask, lengths = random_crf_batch(seed, constrained)
    if ties:
        emissions = emissions.round()
        with torch.no_grad():
            for name in ("start_transitions", "transitions", "end_transitions"):
                if constrained:
                    original = crf.crf.parametrizations[name].original
                else:
                    original = getattr(crf.crf, name)
                original.copy_(original.round())
    got = {}
    with torch.no_grad():
        for rows in (0, len(lengths)):
            monkeypatch.setattr(crf_numpy, "POINTER_MAX_ROWS", rows)
            got[rows] = crf(emissions, mask, entities=True, confidence=True)
        theirs = crf.crf.decode(emissions, mask=mask)
        monkeypatch.undo()
        one_by_one = [
            crf(emissions[i : i + 1, :n], mask[i : i + 1, :n])[0].tolist()
            for i, n in enumerate(lengths.tolist())
        ]
    (paths, found, log_probs), (paths2, found2, log_probs2) = got[0], got[len(lengths)]
    assert torch.equal(paths2, paths) and torch.equal(found2, found)
    assert torch.equal(log_probs2, log_probs)
    assert [paths[i, : len(p)].tolist() for i, p in enumerate(theirs)] == theirs
    assert one_by_one == theirs


@pytest.mark.parametrize("constrained", [True, False])
def test_host_scores_are_the_parametrized_ones_to_the_bit(constrained):
    _, crf, emissions, mask, _ = random_crf_batch(4, constrained)
    host = crf._host_scores()
    for array, name in zip(host, ("transitions", "start_transitions", "end_transitions")):
        assert numpy.array_equal(array, getattr(crf.crf, name).detach().numpy())
    # One sentence, as a pipeline at batch 1 decodes it: the host path equals the torch one.
    one = emissions[3:4, : int(mask[3].sum())]
    with torch.no_grad():
        on_host = crf(one, mask[3:4, : one.shape[1]], entities=True, confidence=True)
        crf.numpy_on_cpu = False
        in_torch = crf(one, mask[3:4, : one.shape[1]], entities=True, confidence=True)
    assert len(on_host[1]) > 1 and len(on_host[2]) == len(on_host[1])
    for a, b in zip(on_host, in_torch):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("numpy_on_cpu", [True, False], ids=["numpy", "torch"])
def test_fused_decoder_with_extreme_scores(numpy_on_cpu):
    """Large emissions (the probability-space passes rescale every step) and ties."""
    tags, crf, emissions, mask, lengths = random_crf_batch(5, True, n_labels=4, scale=60.0)
    crf.numpy_on_cpu = numpy_on_cpu
    emissions[4, :, :] = 0.0  # every tag equally likely: ties everywhere
    with torch.no_grad():
        expected = reference_viterbi(crf, emissions, mask)
        paths, found, log_probs = crf(emissions, mask, entities=True, confidence=True)
    assert torch.equal(paths, expected)
    inside = {i: tags.index("I-" + tag[2:]) for i, tag in enumerate(tags) if tag != "O"}
    rows = reference_entities(tags, expected, lengths)
    spans = torch.tensor([[i, s, e, inside[t]] for i, s, e, t in rows])
    with torch.no_grad():
        reference = reference_span_log_probs(crf, emissions, mask, expected, spans)
    assert torch.isfinite(log_probs).all()
    torch.testing.assert_close(log_probs.exp(), reference.exp(), rtol=0, atol=1e-9)


def test_bio_entities_read_like_seqeval():
    """Random paths, well formed or not: the array reading equals `entity_bounds`."""
    from spacy_secner.pytorch_bilstm_crf import bio_entities, bio_inside_tags

    rng = random.Random(3)
    tags = bio_tags(["A", "B", "C"])
    lengths = numpy.asarray([rng.randint(0, 15) for _ in range(200)])
    paths = numpy.asarray([[rng.randrange(len(tags)) for _ in range(15)] for _ in lengths])
    got = bio_entities(paths, lengths, bio_inside_tags(tags).numpy())
    assert got.tolist() == reference_entities(tags, torch.from_numpy(paths), lengths)


@pytest.mark.parametrize("n_steps", [1, 2, 24, 61])
def test_numpy_and_torch_passes_agree(n_steps):
    """The CPU's numpy passes give the torch passes' paths and entities exactly and their
    log-probabilities up to float64 rounding, for one sequence and for a padded batch."""
    gen = torch.Generator().manual_seed(n_steps)
    tags = bio_tags([f"L{i}" for i in range(13)])
    crf = BIOCRF(tags)
    k = len(tags)
    _set_learned_scores(crf, *(torch.randn(shape, generator=gen) for shape in [k, (k, k), k]))
    for n in (1, 9):
        lengths = torch.randint(1, n_steps + 1, (n,), generator=gen)
        lengths[0] = n_steps
        mask = lengths_to_mask(lengths, n_steps)
        emissions = torch.randn(n, n_steps, k, generator=gen) * 3
        got = {}
        for numpy_on_cpu in (True, False):
            crf.numpy_on_cpu = numpy_on_cpu
            with torch.inference_mode():
                got[numpy_on_cpu] = crf(emissions, mask, entities=True, confidence=True)
        (paths, found, log_probs), (t_paths, t_found, t_log_probs) = got[True], got[False]
        assert torch.equal(paths, t_paths) and torch.equal(found, t_found)
        assert len(found) and log_probs.dtype == torch.float64
        torch.testing.assert_close(log_probs, t_log_probs, rtol=0, atol=1e-12)
