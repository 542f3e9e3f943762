"""The pipeline's PyTorch shims: the optimizer's parameter averages (`use_averages`), and the
encoder loaded from bytes without random weights first."""
import io

import numpy
import pytest
import spacy
import srsly
import torch
from spacy_transformers.layers.hf_shim import HFShim
from thinc.api import Adam, PyTorchWrapper, fix_random_seed
from transformers import BertPreTrainedModel

from conftest import make_examples, make_grouped_trf_nlp
from spacy_secner.layers import EvalModeShim, HFEvalModeShim


def test_averages_reach_the_module_and_are_undone():
    torch.manual_seed(0)
    model = PyTorchWrapper(torch.nn.Linear(4, 3))
    model.shims[0] = EvalModeShim(model.shims[0]._model)
    X = numpy.ones((2, 4), dtype="f")
    model.initialize(X)
    optimizer = Adam(0.1, use_averages=True)
    for _ in range(3):
        Y, backprop = model.begin_update(X)
        backprop(numpy.ones_like(Y))
        model.finish_update(optimizer)
    current = model.predict(X)
    module = model.shims[0]._model
    with model.use_params(optimizer.averages):
        averaged = model.predict(X)
        weight = optimizer.averages[(model.shims[0].id, "weight")]
        assert numpy.allclose(module.weight.detach().numpy(), weight)
    assert not numpy.allclose(current, averaged)
    assert numpy.allclose(model.predict(X), current)  # the trained weights are back


def test_pipeline_evaluates_with_the_averages(tiny_bert_dir):
    """Both shims of the pipeline (encoder and head) take the averages inside
    `nlp.use_params`, as spaCy's training loop uses it to evaluate and save."""
    nlp = make_grouped_trf_nlp(tiny_bert_dir, 512)
    examples = make_examples(nlp)
    optimizer = Adam(0.001, use_averages=True)
    for _ in range(3):
        nlp.update(examples, sgd=optimizer)
    shims = [
        shim
        for name in ("transformer", "ner_crf")
        for node in nlp.get_pipe(name).model.walk()
        for shim in node.shims
    ]
    assert {type(shim).__name__ for shim in shims} == {"HFEvalModeShim", "EvalModeShim"}
    before = [
        {k: v.detach().clone() for k, v in shim._model.named_parameters()} for shim in shims
    ]
    with nlp.use_params(optimizer.averages):
        for shim, trained in zip(shims, before):
            changed = 0
            for name, value in shim._model.named_parameters():
                key = (shim.id, name)
                if key in optimizer.averages:
                    assert numpy.allclose(value.detach().cpu().numpy(), optimizer.averages[key], atol=1e-6)
                    changed += not torch.equal(value, trained[name])
            assert changed > 0
    for shim, trained in zip(shims, before):
        for name, value in shim._model.named_parameters():
            assert torch.equal(value, trained[name])


def _encoder(nlp):
    return nlp.get_pipe("transformer").model.transformer


def _encoder_shim(nlp):
    model = nlp.get_pipe("transformer").model
    return next(shim for node in model.walk() for shim in node.shims)


def test_encoder_loads_the_saved_weights_without_drawing_random_ones(
    tiny_bert_dir, tmp_path, monkeypatch
):
    """`HFEvalModeShim.from_bytes` gives what spacy-transformers' own `from_bytes` gives (the
    same weights, buffers, mode and outputs, and a model that still trains), without
    initializing the encoder's weights first."""
    nlp = make_grouped_trf_nlp(tiny_bert_dir, 16)
    nlp.update(make_examples(nlp), sgd=Adam(0.01))  # weights that differ from any init
    nlp.to_disk(tmp_path / "model")
    texts = ["APT28 used X-Agent against NATO in 2016 .", "Turla struck ."]

    def no_random_init(self, module):
        raise AssertionError("the encoder's weights were initialized before loading")

    with monkeypatch.context() as patch:
        patch.setattr(BertPreTrainedModel, "_init_weights", no_random_init)
        ours = spacy.load(tmp_path / "model")
    with monkeypatch.context() as patch:
        patch.setattr(HFEvalModeShim, "from_bytes", HFShim.from_bytes)
        theirs = spacy.load(tmp_path / "model")
    a, b = _encoder(ours), _encoder(theirs)
    assert type(a) is type(b) and a.training == b.training
    # The configs differ only in the temporary folder each was read from.
    assert {**a.config.to_dict(), "_name_or_path": ""} == {**b.config.to_dict(), "_name_or_path": ""}
    state_a, state_b = a.state_dict(), b.state_dict()
    assert set(state_a) == set(state_b)
    for name, tensor in state_b.items():
        assert torch.equal(state_a[name], tensor), name
    for name, buffer in b.named_buffers():
        assert torch.equal(dict(a.named_buffers())[name], buffer), name
    assert all(isinstance(p, torch.nn.Parameter) and p.requires_grad for p in a.parameters())
    for x, y in zip(ours.pipe(texts), theirs.pipe(texts)):
        assert [(e.start, e.end, e.label_) for e in x.ents] == [(e.start, e.end, e.label_) for e in y.ents]
        assert [e._.confidence for e in x.ents] == [e._.confidence for e in y.ents]
    # Both train alike. (The encoder's gradient reaches its weights at the next step's update.)
    before = a.embeddings.word_embeddings.weight.detach().clone()
    for pipeline in (ours, theirs):
        fix_random_seed(0)
        optimizer = Adam(0.01)
        for _ in range(2):
            pipeline.update(make_examples(pipeline), sgd=optimizer)
    assert not torch.equal(a.embeddings.word_embeddings.weight, before)
    for name, tensor in b.state_dict().items():
        assert torch.allclose(a.state_dict()[name], tensor, atol=1e-6), name


def test_encoder_state_that_does_not_match_takes_spacy_transformers_path(tiny_bert_dir):
    """A saved state with a key the encoder lacks: spacy-transformers' own fallback (its warning,
    then the keys that match), not a half-loaded encoder."""
    nlp = make_grouped_trf_nlp(tiny_bert_dir, 16)
    shim = _encoder_shim(nlp)
    assert isinstance(shim, HFEvalModeShim)
    msg = srsly.msgpack_loads(shim.to_bytes())
    state = torch.load(io.BytesIO(msg["state"]))
    state["extra.weight"] = torch.zeros(2)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    msg["state"] = buffer.getvalue()
    with pytest.warns(UserWarning, match="strict=False"):
        shim.from_bytes(srsly.msgpack_dumps(msg))
    assert not any(p.is_meta for p in shim._model.parameters())


def test_device_is_the_first_parameters_as_thinc_finds_it():
    """The shims find their module's first parameter once and check it with one lookup: the
    device follows a replaced parameter and a replaced module, as thinc's own lookup does."""
    from thinc.shims.pytorch import PyTorchShim

    module = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(3, 2))
    shim = EvalModeShim(module)
    assert shim.device == PyTorchShim.device.fget(shim) == torch.device("cpu")
    module[1].weight = torch.nn.Parameter(torch.zeros(2, 3, device="meta"))
    assert shim.device == PyTorchShim.device.fget(shim) == torch.device("meta")
    shim._model = torch.nn.Linear(3, 2)
    assert shim.device == torch.device("cpu")
    shim._model = torch.nn.ReLU()  # no parameters: thinc's default device
    assert shim.device == PyTorchShim.device.fget(shim)
