"""The shims' fused Adam update computes what thinc's optimizer computes parameter by parameter."""
import numpy
import pytest
import torch
from thinc.api import Adam, PyTorchWrapper, RAdam

from conftest import train_with_each_adam_update
from spacy_secner.layers import EvalModeShim, shims
from spacy_secner.layers.adam_step import fused_adam_supported


class TwoLayers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Linear(4, 8)
        self.second = torch.nn.Linear(8, 3)
        self.unused = torch.nn.Linear(2, 2)  # never gets a gradient

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.second(torch.tanh(self.first(X)))


def wrapped(seed: int = 0) -> PyTorchWrapper:
    torch.manual_seed(seed)
    model = PyTorchWrapper(TwoLayers())
    model.shims[0] = EvalModeShim(model.shims[0]._model)
    model.initialize(numpy.ones((2, 4), dtype="f"))
    return model


def train(model, optimizer, fused: bool, monkeypatch, steps: int = 5, rates=None):
    monkeypatch.setattr(shims._FusedAdamUpdate, "fused_adam", fused)
    rng = numpy.random.default_rng(0)
    for step in range(steps):
        if rates is not None:
            optimizer.learn_rate = rates[step]
        X = rng.normal(size=(5, 4)).astype("f")
        Y, backprop = model.begin_update(X)
        backprop(Y * 3.0)
        model.finish_update(optimizer)
    return {name: p.detach().clone() for name, p in model.shims[0]._model.named_parameters()}


@pytest.mark.parametrize(
    "settings",
    [
        {"grad_clip": 1.0, "L2": 0.0},
        {"grad_clip": 0.01, "L2": 0.0},  # every gradient clipped
        {"grad_clip": 0.0, "L2": 0.01, "L2_is_weight_decay": True},
        {"grad_clip": 1.0, "L2": 0.01, "L2_is_weight_decay": False},
    ],
)
def test_same_weights_and_counts_as_thincs_loop(settings, monkeypatch):
    optimizers = [Adam(0.05, use_averages=False, **settings) for _ in range(2)]
    assert all(fused_adam_supported(o) for o in optimizers)
    models = [wrapped(), wrapped()]
    rates = [0.05, 0.05, 0.02, 0.02, 0.01]  # a schedule's changes between steps
    thincs = train(models[0], optimizers[0], False, monkeypatch, rates=rates)
    fused = train(models[1], optimizers[1], True, monkeypatch, rates=rates)
    initial = dict(wrapped().shims[0]._model.named_parameters())
    for name, value in thincs.items():
        torch.testing.assert_close(fused[name], value, rtol=1e-5, atol=1e-6)
        if name.startswith("unused"):
            assert torch.equal(value, initial[name])
        else:
            assert not torch.equal(value, initial[name])
    shim_ids = [m.shims[0].id for m in models]
    counts = [{k[1]: v for k, v in o.nr_update.items() if k[0] == i} for o, i in zip(optimizers, shim_ids)]
    assert counts[0] == counts[1] == {f"{layer}.{p}": 5 for layer in ("first", "second") for p in ("weight", "bias")}
    assert all(p.grad is None or not p.grad.any() for p in models[1].shims[0]._model.parameters())


def test_a_new_optimizer_starts_from_fresh_moments(monkeypatch):
    models = [wrapped(), wrapped()]
    first = [Adam(0.05, use_averages=False) for _ in range(2)]
    train(models[0], first[0], False, monkeypatch)
    train(models[1], first[1], True, monkeypatch)
    second = [Adam(0.05, use_averages=False) for _ in range(2)]
    thincs = train(models[0], second[0], False, monkeypatch, steps=2)
    fused = train(models[1], second[1], True, monkeypatch, steps=2)
    # Seven steps at a high rate: float32 rounding (the kernels order their sums differently)
    # adds up a little more than in one run.
    for name, value in thincs.items():
        torch.testing.assert_close(fused[name], value, rtol=1e-4, atol=1e-5)


def test_other_optimizers_take_thincs_loop(monkeypatch):
    assert not fused_adam_supported(Adam(0.01))  # parameter averages (thinc's default)
    assert not fused_adam_supported(RAdam(0.01, use_averages=False))
    called = []
    monkeypatch.setattr(shims, "fused_adam_step", lambda *args: called.append(args))
    model = wrapped()
    optimizer = Adam(0.05)
    train(model, optimizer, True, monkeypatch, steps=2)
    assert not called
    assert (model.shims[0].id, "first.weight") in optimizer.averages


def test_pipeline_trains_the_same_with_either_update(tiny_bert_dir, monkeypatch):
    """Encoder and head (at its own rate), gradient clipping as configured: the same losses and
    weights as thinc's loop, to float32 rounding."""
    (losses, weights), (fused_losses, fused_weights) = train_with_each_adam_update(
        tiny_bert_dir, monkeypatch
    )
    assert fused_losses == pytest.approx(losses, rel=1e-5)
    for key, value in weights.items():
        torch.testing.assert_close(fused_weights[key], value, rtol=1e-4, atol=1e-5)
