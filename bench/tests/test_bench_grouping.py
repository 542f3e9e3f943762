"""`bench_speed.py grouping`: the transformer's batching settings timed side by side."""
import pytest
import torch
from conftest import TRAIN_TEXTS, make_grouped_trf_nlp, make_trf_nlp

from harness.grouping import (
    apply_setting,
    current_setting,
    parse_settings,
    render_settings,
    time_settings,
)


def test_parse_settings():
    assert parse_settings(
        "4096:512, 512:0,4096:512:eager,4096:512:0,4096:512:128:frozen,4096:512:transposed,"
        "4096:512:fullrows,4096:512:128:eager:even"
    ) == [
        (4096, 512, None, None, None), (512, 0, None, None, None),
        (4096, 512, None, "eager", None), (4096, 512, 0, None, None),
        (4096, 512, 128, "frozen", None), (4096, 512, None, "transposed", None),
        (4096, 512, None, None, "fullrows"), (4096, 512, 128, "eager", "even"),
    ]
    bad_ones = ["", "4096", "4096:x", "0:512", "512:-1", "1:2:-3", "1:2:jit", "1:2:eager:3",
                "1:2:3:4", "1:2:3:4:eager", "1:2:fullrows:eager", "1:2:full"]
    for bad in bad_ones:
        with pytest.raises(ValueError):
            parse_settings(bad)


def test_time_settings_times_each_and_restores(tiny_bert_dir):
    nlp = make_grouped_trf_nlp(tiny_bert_dir, 64)
    seen = []
    layer = nlp.get_pipe("transformer").model.layers[0]
    texts = {"sentences": TRAIN_TEXTS, "documents": [" ".join(TRAIN_TEXTS)]}
    settings = [
        (4096, 64, None, None, None), (16, 0, 0, "eager", None), (4096, 8, 16, "frozen", "fullrows")
    ]
    original = current_setting(nlp)
    assert original == (4096, 64, 128, "frozen", "even")
    rows = time_settings(
        nlp, texts, settings, batch_size=4, repeats=2,
        sync=lambda: seen.append(current_setting(nlp)),
    )
    assert [
        (r["texts"], r["max_batch_items"], r["max_batch_wordpieces"], r["packed_row_wordpieces"],
         r["encoder"], r["rows"])
        for r in rows
    ] == [
        (name, items, wordpieces, 128 if packed is None else packed, mode or "frozen", plan or "even")
        for name in texts for items, wordpieces, packed, mode, plan in settings
    ]
    assert all(r["wps_median"] > 0 and r["wps_best"] >= r["wps_median"] for r in rows)
    assert rows[0]["vs_first"] == 1.0
    # Interleaved: each timed pass is bracketed by two syncs under its own setting.
    applied = [
        (4096, 64, 128, "frozen", "even"), (16, 0, 0, "eager", "even"),
        (4096, 8, 16, "frozen", "fullrows"),
    ]
    assert seen[:6] == [applied[0]] * 2 + [applied[1]] * 2 + [applied[2]] * 2
    assert current_setting(nlp) == original and layer.attrs["max_batch_wordpieces"] == 64
    assert layer.attrs["packed_row_wordpieces"] == 128 and layer.shims[0].frozen_inference
    table = render_settings(rows)
    assert table.count("\n") == 1 + len(rows) and "| documents | 16 | 0 | 0 | eager | even |" in table


def test_needs_the_grouping_transformer(tiny_bert_dir):
    nlp = make_trf_nlp(tiny_bert_dir)  # spacy-transformers' v3
    with pytest.raises(ValueError, match="TransformerModel.v1"):
        apply_setting(nlp, (4096, 512, None, None, None))


def test_transposed_setting_runs_a_twin_graph_and_restores(tiny_bert_dir):
    """"transposed" runs each frozen graph as its optimize_for_inference twin (linear weights
    copied, transposed), with the same entities; any other setting puts the graph's own call
    back."""
    from spacy_secner.layers import frozen_encoder

    from harness import grouping

    nlp = make_grouped_trf_nlp(tiny_bert_dir, 64)
    encoder = nlp.get_pipe("transformer").model.layers[0].shims[0]._model
    own_call = frozen_encoder.FrozenGraph.__call__
    frozen = [[(e.start, e.end, e.label_) for e in d.ents] for d in nlp.pipe(TRAIN_TEXTS)]
    graph = frozen_encoder._GRAPHS[encoder]
    apply_setting(nlp, (4096, 64, None, "transposed", None))
    assert current_setting(nlp)[3] == "frozen"
    transposed = [[(e.start, e.end, e.label_) for e in d.ents] for d in nlp.pipe(TRAIN_TEXTS)]
    assert transposed == frozen
    twin = grouping._TWINS[graph]
    weights = {p.data_ptr() for p in encoder.parameters()}
    nodes = [n for n in twin.graph.graph.nodes() if n.kind() == "prim::Constant"]
    constants = [c for c in (n.output().toIValue() for n in nodes) if isinstance(c, torch.Tensor)]
    assert any(c.dim() == 2 and c.data_ptr() not in weights for c in constants)
    apply_setting(nlp, (4096, 64, None, "frozen", None))
    assert frozen_encoder.FrozenGraph.__call__ is own_call
    assert frozen_encoder._GRAPHS[encoder] is graph


def test_fullrows_setting_packs_rows_at_full_length_and_restores(tiny_bert_dir, monkeypatch):
    """"fullrows" plans each call's rows best fit at their full length (the rows' lengths not
    evened out), with the same entities; "even" puts the pipeline's own plan back."""
    from spacy_secner.layers import grouped_encoder, packing

    nlp = make_grouped_trf_nlp(tiny_bert_dir, 0, packed_row_wordpieces=40)
    text = " ".join(TRAIN_TEXTS)
    planned = []
    inner = packing.pack_calls
    monkeypatch.setattr(
        grouped_encoder, "pack_calls",
        lambda inputs, lengths, rows, padded: planned.append((list(lengths), rows))
        or inner(inputs, lengths, rows, padded),
    )
    even = [(e.start, e.end, e.label_) for e in nlp(text).ents]
    apply_setting(nlp, (4096, 0, None, None, "fullrows"))
    assert current_setting(nlp)[4] == "fullrows"
    full = [(e.start, e.end, e.label_) for e in nlp(text).ents]
    apply_setting(nlp, (4096, 0, None, None, "even"))
    assert grouped_encoder.plan_rows is packing.plan_rows
    assert full == even
    (lengths, even_rows), (same_lengths, full_rows) = planned
    assert lengths == same_lengths and len(lengths) > 2
    assert even_rows == packing.plan_rows(lengths, 40)
    assert full_rows == packing._best_fit(lengths, max(40, *lengths))
    fills = [sorted(sum(lengths[i] for i in row) for row in rows) for rows in (even_rows, full_rows)]
    # Full rows leave the room at the end of the last; evened out, the fullest row is shorter.
    assert len(fills[0]) == len(fills[1]) and max(fills[0]) < max(fills[1])
