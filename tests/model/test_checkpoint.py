"""Loading a checkpoint (model/checkpoint.py): a bad directory is one clear error naming the file and
the field or tensor, and nothing is ever unpickled."""
import json
import os
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

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


def edit_weights(d, change, name="model.safetensors"):
    """Rewrite a saved weights file after change(tensors) edits its {name: tensor} in place."""
    tensors = load_file(d / name)
    change(tensors)
    save_file(tensors, d / name, metadata={"format": "pt"})


def test_tensors_of_more_layers_than_config_json_says(tmp_path):
    save_model(tiny(n_layers=4), tmp_path)          # 4 layers of weights under a config of 2
    c = json.loads((tmp_path / "config.json").read_text())
    c["num_hidden_layers"] = 2
    (tmp_path / "config.json").write_text(json.dumps(c))
    with pytest.raises(CheckpointError) as e:
        load_model(str(tmp_path))
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path}/model.safetensors: 18 tensor(s) that {tmp_path}/config.json "
                          f"does not describe would go unused (model.layers.2.")      # 2 layers x 9
    assert "field 'num_hidden_layers' is 2, but this file holds tensors of layer 3" in msg


def test_a_stray_tensor_is_an_error(saved):
    edit_weights(saved, lambda t: t.update({"model.extra.weight": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: 1 tensor\(s\) .* would go unused "
                                              r"\(model\.extra\.weight\)$"):
        load_model(str(saved))


def test_a_stray_tensor_in_any_shard_is_an_error(saved):
    """A sharded checkpoint: every shard is read, also one holding nothing the weight_map lists."""
    tensors = load_file(saved / "model.safetensors")
    os.remove(saved / "model.safetensors")
    names = sorted(tensors)
    shards = {"model-1.safetensors": names[:5], "model-2.safetensors": names[5:]}
    for f, part in shards.items():
        save_file({n: tensors[n] for n in part}, saved / f)
    (saved / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {n: f for f, part in shards.items() for n in part}}))
    assert load_model(str(saved))[1].n_layers == 2             # the sharded layout itself loads
    save_file({"model.layers.2.mlp.up_proj.weight": torch.zeros(3)}, saved / "model-3.safetensors")
    index = json.loads((saved / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.2.mlp.up_proj.weight"] = "model-3.safetensors"
    (saved / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"model-3\.safetensors: 1 tensor\(s\) .*"
                                              r"'num_hidden_layers' is 2"):
        load_model(str(saved))


def test_rotary_inv_freq_buffers_of_old_checkpoints_are_skipped(saved):
    """Old Llama checkpoints store every layer's rotary_emb.inv_freq; transformers skips them, and
    so do we: the frequencies come from config.json."""
    model, _ = load_model(str(saved))
    edit_weights(saved, lambda t: t.update({f"model.layers.{i}.self_attn.rotary_emb.inv_freq":
                                            torch.ones(6) for i in range(2)}))
    again, _ = load_model(str(saved))
    x = torch.tensor([[3, 4, 5, 6]])
    assert torch.equal(again(x), model(x))


def test_a_tied_lm_head_is_skipped_only_as_a_copy_of_the_embedding(tmp_path):
    """Under tie_word_embeddings, transformers ties a stored lm_head.weight equal to the embedding
    and unties (uses) a different one; tying a different one away would load another model."""
    save_model(tiny(tie_embeddings=True), tmp_path)
    model, _ = load_model(str(tmp_path))
    edit_weights(tmp_path, lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"].clone()}))
    again, _ = load_model(str(tmp_path))
    x = torch.tensor([[3, 4, 5, 6]])
    assert again.lm_head.weight is again.embed_tokens.weight and torch.equal(again(x), model(x))
    edit_weights(tmp_path, lambda t: t["lm_head.weight"].add_(1.0))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor 'lm_head\.weight' differs from "
                                              r"'model\.embed_tokens\.weight', but .*config\.json: field "
                                              r"'tie_word_embeddings' is true"):
        load_model(str(tmp_path))


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
