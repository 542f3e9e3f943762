"""A bound on the compiled oneDNN primitives PyTorch keeps in this process.

On the CPU, PyTorch runs the BiLSTM of a single sequence or a padded batch through oneDNN, which
compiles a primitive for each input shape and by default keeps 1,024 of them, about 0.4 MiB
each: a process that annotates texts of every length grows by hundreds of MiB and keeps it
(BENCHMARKS.md, "oneDNN's primitive cache": 127 MiB over 300 lengths, 55 MiB with this bound).
128 holds a shape for every length of a single sentence up to 128 tokens; a shape that was
dropped costs a few milliseconds to compile again, next to tens of milliseconds for the
document it comes with.
"""
import os

PRIMITIVE_CACHE_CAPACITY = 128
# oneDNN reads the first of these that is set; DNNL_ is its older prefix.
CAPACITY_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "DNNL_PRIMITIVE_CACHE_CAPACITY")


def bound_primitive_cache(capacity: int = PRIMITIVE_CACHE_CAPACITY) -> bool:
    """Set oneDNN's primitive cache capacity for this process, unless it is set already.

    oneDNN reads the setting when it first compiles a primitive, so this takes effect only
    before the process's first one (importing spacy_secner does it that early in any pipeline
    that loads it). RETURNS (bool): Whether the setting was made here.
    """
    if any(name in os.environ for name in CAPACITY_VARIABLES):
        return False
    os.environ[CAPACITY_VARIABLES[0]] = str(capacity)
    return True
