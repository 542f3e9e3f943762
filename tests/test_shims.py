"""The pipeline's PyTorch shims use the optimizer's parameter averages (`use_averages`)."""
import numpy
import torch
from thinc.api import Adam, PyTorchWrapper

from conftest import make_examples, make_grouped_trf_nlp

from spacy_secner.layers import EvalModeShim


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
