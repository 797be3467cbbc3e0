"""Loading a checkpoint (model/checkpoint.py): a bad directory is one clear error naming the file and
the field or tensor, and nothing is ever unpickled."""
import json
import os
import re

import pytest

from model.checkpoint import CheckpointError, load, load_model, save_model
from tests.helpers import tiny


# -- bad input: one clear error naming the file and the field or tensor --------------------------
@pytest.fixture
def saved(tmp_path):
    save_model(tiny(), tmp_path)
    return tmp_path


def test_missing_config(saved):
    os.remove(saved / "config.json")
    with pytest.raises(CheckpointError, match=r"config\.json: file not found"):
        load_model(str(saved))


def test_corrupt_config(saved):
    (saved / "config.json").write_text('{"model_type": "llama",\n  "vocab_size": }')
    with pytest.raises(CheckpointError, match=r"config\.json: invalid JSON at line 2"):
        load_model(str(saved))


def test_unknown_model_type(saved):
    c = json.loads((saved / "config.json").read_text())
    c["model_type"] = "gpt2"
    (saved / "config.json").write_text(json.dumps(c))
    with pytest.raises(CheckpointError, match=r"config\.json: field 'model_type' is 'gpt2'"):
        load_model(str(saved))


@pytest.mark.parametrize("rope_scaling, says", [
    ({"rope_type": "llama3", "original_max_position_embeddings": 8}, "needs a number 'factor'"),
    ({"rope_type": "llama3", "factor": "8", "original_max_position_embeddings": 8}, "needs a number 'factor'"),
    ({"rope_type": "llama3", "factor": 8.0}, "needs a number 'original_max_position_embeddings'"),
    ({"rope_type": "yarn", "factor": 4.0}, "only the 'llama3' type is supported"),
    ("llama3", "only the 'llama3' type is supported"),
])
def test_bad_rope_scaling_names_the_field(saved, rope_scaling, says):
    c = json.loads((saved / "config.json").read_text())
    c["rope_scaling"] = rope_scaling
    (saved / "config.json").write_text(json.dumps(c))
    with pytest.raises(CheckpointError, match=r"config\.json: field 'rope_scaling' .*" + re.escape(says)):
        load_model(str(saved))


def test_truncated_safetensors(saved):
    p = saved / "model.safetensors"
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot read"):
        load_model(str(saved))


def test_wrong_tensor_shape(saved):
    c = json.loads((saved / "config.json").read_text())
    c["intermediate_size"] = 80
    (saved / "config.json").write_text(json.dumps(c))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor 'model\.layers\.0\.mlp\.\w+_proj"
                                              r"\.weight' has shape"):
        load_model(str(saved))


def test_cli_errors_are_one_line(saved, tmp_path):
    import subprocess
    import sys
    os.remove(saved / "config.json")
    r = subprocess.run([sys.executable, "sample.py", "--init_from", str(saved), "--prompt", "hi"],
                       capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert r.returncode != 0 and "config.json: file not found" in r.stderr
    assert "Traceback" not in r.stderr


def test_never_unpickles(saved):
    (saved / "pytorch_model.bin").write_bytes(b"not a pickle")
    os.remove(saved / "model.safetensors")
    with pytest.raises(CheckpointError, match="safetensors only"):
        load(str(saved))
