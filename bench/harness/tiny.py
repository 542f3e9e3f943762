"""The tiny-encoder check: the pipeline's own overhead, with the encoder out of the picture.

A random BERT of 2 layers and width 64 with the embedded MiniLM's tokenizer costs almost nothing,
as a large encoder does on a GPU, so what is left is the work of spaCy, spacy-transformers and
`ner_crf` around it. The pipeline is the shipped config with that encoder (random weights,
DNRTI's labels), timed beside the same model in plain PyTorch and beside an HF token classifier
(`workers.py`: `plain`, `hf_spans`).
"""

from pathlib import Path
from typing import Dict, Sequence

# 2 layers of width 64 (2 heads of 32, as MiniLM's heads), feed-forward 4x.
TINY_ENCODER_SHAPE: Dict[str, int] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 256,
    "max_position_embeddings": 512,
}


def make_tiny_encoder(output: Path, *, seed: int = 0) -> Path:
    """Save a random BERT of `TINY_ENCODER_SHAPE` with the embedded MiniLM's tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from spacy_secner.encoders import embedded_encoder

    tokenizer = AutoTokenizer.from_pretrained(embedded_encoder(), use_fast=True)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), **TINY_ENCODER_SHAPE)
    output.mkdir(parents=True, exist_ok=True)
    BertModel(config).save_pretrained(output)
    tokenizer.save_pretrained(output)
    return output


def make_tiny_pipeline(
    config_path: Path, encoder: Path, output: Path, sample: Sequence[str], labels: Sequence[str]
) -> Path:
    """The pipeline of `config_path` with `encoder` as its transformer, initialized on `sample`
    texts with `labels` (random weights: only its speed counts), saved to `output`."""
    import spacy
    from spacy.training import Example
    from thinc.api import fix_random_seed

    config = spacy.util.load_config(config_path, interpolate=False)
    config["components"]["transformer"]["model"]["name"] = str(encoder)
    fix_random_seed(0)
    nlp = spacy.util.load_model_from_config(config, auto_fill=True, validate=True)
    ner = nlp.get_pipe("ner_crf")
    for label in labels:
        ner.add_label(label)
    examples = [Example(nlp.make_doc(text), nlp.make_doc(text)) for text in sample]
    nlp.initialize(lambda: examples)
    nlp.to_disk(output)
    return output
