"""The bound on oneDNN's primitive cache that importing spacy_secner sets (`onednn.py`)."""
import os
import subprocess
import sys

from spacy_secner import onednn


def test_bound_is_set_unless_the_process_has_one(monkeypatch):
    for name in onednn.CAPACITY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert onednn.bound_primitive_cache()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(onednn.PRIMITIVE_CACHE_CAPACITY)
    # A capacity set by the user, under either prefix, stays as it is.
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "7")
    assert not onednn.bound_primitive_cache()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "7"
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY")
    monkeypatch.setenv("DNNL_PRIMITIVE_CACHE_CAPACITY", "9")
    assert not onednn.bound_primitive_cache()
    assert "ONEDNN_PRIMITIVE_CACHE_CAPACITY" not in os.environ


def test_importing_the_package_sets_it_before_torch_runs():
    env = {k: v for k, v in os.environ.items() if k not in onednn.CAPACITY_VARIABLES}
    code = "import os, spacy_secner; print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(onednn.PRIMITIVE_CACHE_CAPACITY)
