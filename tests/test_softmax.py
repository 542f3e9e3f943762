"""The softmax baseline (`spacy-secner.TransformerSoftmax.v1`): same pipe, no BiLSTM, no CRF."""
import itertools

import pytest
import spacy
import torch
from conftest import (
    CNN_TOK2VEC,
    GOLD_ENTS,
    TRAIN_TEXTS,
    ents_of,
    load_in_fresh_process,
    make_examples,
    train_until_gold,
)
from thinc.api import fix_random_seed

from spacy_secner.pytorch_bilstm_crf import SoftmaxTagger, lengths_to_mask


def make_softmax_nlp(seed: int = 0):
    fix_random_seed(seed)
    nlp = spacy.blank("en")
    model = {"@architectures": "spacy-secner.TransformerSoftmax.v1", "tok2vec": dict(CNN_TOK2VEC)}
    nlp.add_pipe("ner_crf", config={"model": model})
    return nlp


@pytest.fixture(scope="module")
def trained_softmax_nlp():
    nlp = make_softmax_nlp()
    result = train_until_gold(nlp, make_examples(nlp), max_steps=300)
    assert result["predicted"] == GOLD_ENTS
    return nlp


def test_softmax_model_has_no_lstm_and_no_crf_weights(trained_softmax_nlp):
    model = trained_softmax_nlp.get_pipe("ner_crf").model
    emitter = model.get_ref("emitter").shims[0]._model
    assert emitter.lstm is None
    tagger = model.get_ref("decoder").shims[0]._model
    assert isinstance(tagger, SoftmaxTagger)
    assert list(tagger.parameters()) == []


def test_softmax_overfits_and_reloads_in_fresh_process(trained_softmax_nlp, tmp_path):
    docs = list(trained_softmax_nlp.pipe(TRAIN_TEXTS))
    assert [ents_of(doc) for doc in docs] == GOLD_ENTS
    assert all(0.0 < ent._.confidence <= 1.0 for doc in docs for ent in doc.ents)
    trained_softmax_nlp.to_disk(tmp_path / "model")
    loaded = load_in_fresh_process(tmp_path / "model", TRAIN_TEXTS, tmp_path)
    expected = [[[e.start, e.end, e.label_] for e in doc.ents] for doc in docs]
    assert loaded["ents"] == expected


def test_softmax_loss_is_summed_token_cross_entropy():
    torch.manual_seed(0)
    emissions = torch.randn(2, 4, 3, requires_grad=True)
    mask = lengths_to_mask(torch.tensor([4, 2]), 4)
    tags = torch.tensor([[0, 1, 2, 0], [2, 2, -1, -1]])
    loss = SoftmaxTagger()(emissions, mask, tags)
    log_p = emissions.log_softmax(-1)
    expected = -(
        log_p[0, [0, 1, 2, 3], [0, 1, 2, 0]].sum() + log_p[1, [0, 1], [2, 2]].sum()
    ) / 2
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    loss.backward()
    assert emissions.grad[1, 2:].abs().sum() == 0  # padding gets no gradient


def test_softmax_decodes_the_argmax_and_pads_with_minus_one():
    emissions = torch.tensor([[[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]], [[0.0, 0.0, 5.0], [9.0, 0.0, 0.0]]])
    mask = lengths_to_mask(torch.tensor([2, 1]), 2)
    assert SoftmaxTagger()(emissions, mask).tolist() == [[1, 0], [2, -1]]


def test_softmax_span_log_probs_match_enumeration():
    torch.manual_seed(1)
    tags = ["O", "B-A", "I-A", "B-B", "I-B"]
    lengths = torch.tensor([5, 3])
    emissions = torch.randn(2, 5, len(tags))
    mask = lengths_to_mask(lengths, 5)
    path = torch.tensor([[1, 2, 0, 3, 4], [3, 0, 1, -1, -1]])
    spans = torch.tensor([[0, 0, 2, 2], [0, 3, 5, 4], [1, 0, 1, 4], [1, 2, 3, 2]])
    got = SoftmaxTagger()(emissions, mask, path, spans=spans).exp()
    probs = emissions.log_softmax(-1).exp()
    for (seq, start, end, barred), p in zip(spans.tolist(), got.tolist()):
        n = int(lengths[seq])
        agree = 0.0
        for every in itertools.product(range(len(tags)), repeat=n):
            if list(every[start:end]) != path[seq, start:end].tolist():
                continue
            if end < n and every[end] == barred:
                continue
            agree += float(torch.prod(probs[seq, torch.arange(n), torch.tensor(every)]))
        assert p == pytest.approx(agree, abs=1e-6)
