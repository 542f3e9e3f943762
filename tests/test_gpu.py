"""Training and prediction on a CUDA GPU (skipped without one)."""
import pytest
import torch
from conftest import GOLD_ENTS, TRAIN_TEXTS, make_cnn_nlp, make_examples, make_grouped_trf_nlp
from conftest import make_trf_nlp, offsets_of
from conftest import train_until_gold, train_with_each_adam_update
from thinc.api import get_current_ops, require_cpu, require_gpu

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture
def on_gpu():
    pytest.importorskip("cupy", reason="spaCy runs on a GPU through cupy")
    require_gpu(0)
    yield
    require_cpu()


@pytest.mark.parametrize("kind", ["cnn", "tiny_bert"])
def test_train_and_predict_on_gpu(on_gpu, kind, tiny_bert_dir):
    nlp = make_cnn_nlp() if kind == "cnn" else make_trf_nlp(tiny_bert_dir)
    assert type(get_current_ops()).__name__ == "CupyOps"
    result = train_until_gold(nlp, make_examples(nlp), max_steps=300)
    assert result["losses"][-1] < 0.5 * result["losses"][0]
    assert result["predicted"] == GOLD_ENTS
    ner = nlp.get_pipe("ner_crf")
    docs = list(nlp.pipe(TRAIN_TEXTS + ["", "APT28"]))
    assert docs[-2].ents == ()
    tag_ids, entities, _ = ner.predict(docs)
    # Decoded paths and entities come back to the host once per batch: numpy, not cupy.
    assert type(tag_ids[0]).__module__ == "numpy" and type(entities[0]).__module__ == "numpy"
    assert [len(ids) for ids in tag_ids] == [len(d) for d in docs]
    scores = ner.model.predict(docs[:5])
    assert type(scores[0]).__module__.startswith("cupy")


def test_grouped_encoder_on_gpu(on_gpu, tiny_bert_dir):
    """spacy-secner.TransformerModel.v1 on cupy arrays and CUDA tensors, packed and in padded
    groups, equals one padded call."""
    nlp = make_grouped_trf_nlp(tiny_bert_dir, 16)
    texts = ["APT28 struck .", " ".join(TRAIN_TEXTS), TRAIN_TEXTS[0] + " Turla used Snake ."]
    attrs = nlp.get_pipe("transformer").model.layers[0].attrs
    packed = list(nlp.pipe(texts))
    attrs["packed_row_wordpieces"] = 0
    grouped = list(nlp.pipe(texts))
    attrs["max_batch_wordpieces"] = 0
    whole = list(nlp.pipe(texts))
    for a, b in [*zip(whole, grouped), *zip(whole, packed)]:
        assert offsets_of(a) == offsets_of(b)
        ha = a._.trf_data.model_output.last_hidden_state
        hb = b._.trf_data.model_output.last_hidden_state
        assert type(hb).__module__.startswith("cupy") and ha.shape == hb.shape
        mask = a._.trf_data.wordpieces.attention_mask.astype(bool)
        assert float(abs(ha[mask] - hb[mask]).max()) < 1e-4


def test_fused_adam_update_on_gpu_matches_thincs_loop(on_gpu, tiny_bert_dir, monkeypatch):
    """On the GPU the update runs as PyTorch's fused kernel: the same training as thinc's loop
    (cupy's Adam kernel), to float32 rounding."""
    (losses, weights), (fused_losses, fused_weights) = train_with_each_adam_update(
        tiny_bert_dir, monkeypatch
    )
    assert fused_losses == pytest.approx(losses, rel=1e-4)
    for key, value in weights.items():
        torch.testing.assert_close(fused_weights[key], value, rtol=1e-4, atol=1e-5)
