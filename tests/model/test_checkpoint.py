"""Loading a checkpoint (model/checkpoint.py): a bad directory is one clear error naming the file and
the field or tensor, and nothing is ever unpickled."""
import json
import os
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from model import gguf_import
from model.checkpoint import CheckpointError, load, load_model, save_model
from tests.helpers import tiny


# -- bad input: one clear error naming the file and the field or tensor --------------------------
@pytest.fixture
def saved(tmp_path):
    save_model(tiny(), tmp_path)
    return tmp_path


def test_a_checkpoint_without_config_json_names_the_file(saved):
    os.remove(saved / "config.json")
    with pytest.raises(CheckpointError, match=r"config\.json: file not found"):
        load_model(str(saved))


def test_a_missing_directory_and_a_runs_directory_say_what_they_are(tmp_path):
    """--init_from nope said "nope: not a directory", and a run's directory (train.py's --out_dir,
    which holds ckpt/) "config.json: file not found"; the first does not exist, the second holds the
    checkpoint one level down."""
    with pytest.raises(CheckpointError, match=r"nope: does not exist$"):
        load_model(str(tmp_path / "nope"))
    save_model(tiny(), tmp_path / "smollm2-135m")          # a character short of a directory beside it
    with pytest.raises(CheckpointError) as e:
        load_model(str(tmp_path / "smollm2-135"))
    assert str(e.value) == f"{tmp_path / 'smollm2-135'}: does not exist; did you mean {tmp_path / 'smollm2-135m'}?"
    save_model(tiny(), tmp_path / "run" / "ckpt")
    with pytest.raises(CheckpointError, match=r"run: no config\.json; the checkpoint of the run there is .*run/ckpt"):
        load_model(str(tmp_path / "run"))


def test_a_config_json_that_is_no_json_names_its_line(saved):
    (saved / "config.json").write_text('{"model_type": "llama",\n  "vocab_size": }')
    with pytest.raises(CheckpointError, match=r"config\.json: invalid JSON at line 2"):
        load_model(str(saved))


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    """A config.json or chat_template.jinja saved as UTF-16 (Windows PowerShell's `>` writes it) was a
    bare UnicodeDecodeError traceback that named no file."""
    from tests.helpers import byte_tokenizer
    d, tok = tmp_path / "ck", byte_tokenizer()
    save_model(tiny(vocab_size=tok.vocab_size), d, tok)
    (d / "chat_template.jinja").write_text("{{ messages[0]['content'] }}", encoding="utf-16")
    with pytest.raises(CheckpointError) as e:
        load(str(d))
    assert str(e.value) == f"{d / 'chat_template.jinja'}: not UTF-8 text (byte 0xff at offset 0); save it as UTF-8"
    os.remove(d / "chat_template.jinja")
    text = (d / "config.json").read_text()
    (d / "config.json").write_text(text.replace("{", "{\"note\": \"caf\u00e9\", ", 1), encoding="latin-1")
    with pytest.raises(CheckpointError, match=re.escape(f"{d / 'config.json'}: not UTF-8 text (byte 0xe9 at offset ")):
        load(str(d))
    (d / "config.json").write_text(text, encoding="utf-8")
    assert load(str(d))[1].chat_format == "selfjudge"          # the byte tokenizer's own, read again


def test_unknown_model_type(saved):
    c = json.loads((saved / "config.json").read_text())
    c["model_type"] = "gpt2"
    (saved / "config.json").write_text(json.dumps(c))
    with pytest.raises(CheckpointError, match=r"config\.json: field 'model_type' is 'gpt2'"):
        load_model(str(saved))


@pytest.mark.parametrize("rope_scaling, says", [
    ({"rope_type": "llama3", "original_max_position_embeddings": 8}, "needs a number 'factor'"),
    ({"rope_type": "llama3", "factor": "8", "original_max_position_embeddings": 8}, "needs a number 'factor'"),
    ({"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": None},
     "needs a number 'original_max_position_embeddings'"),
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


def test_an_index_that_is_not_an_object_names_the_file(saved):
    os.remove(saved / "model.safetensors")
    (saved / "model.safetensors.index.json").write_text('["model-1.safetensors"]')
    with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json: expected a JSON object"):
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


@pytest.mark.parametrize("field", ["bos_token_id", "eos_token_id", "pad_token_id"])
def test_a_token_id_config_json_sets_to_null_is_none(saved, field):
    # transformers reads null as no such token; absent is LlamaConfig's default (bos 1, eos 2). A null
    # eos_token_id read as 2 made id 2 a stop id of generation, whatever token 2 is.
    c = json.loads((saved / "config.json").read_text())
    absent = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": None}[field]
    c.pop(field)
    (saved / "config.json").write_text(json.dumps(c))
    model, _ = load_model(str(saved))
    assert getattr(model.cfg, field) == absent
    c[field] = None
    (saved / "config.json").write_text(json.dumps(c))
    model, _ = load_model(str(saved))
    assert getattr(model.cfg, field) is None
    assert field != "eos_token_id" or model.cfg.eos_ids == []


def test_a_tokenizer_with_ids_beyond_the_embedding_is_refused_at_load(tmp_path):
    """A tokenizer.json with tokens added after the weights were made (a pad token, say) without
    resizing the embedding: sample.py ended in torch's 'IndexError: index out of range in self' at
    the first forward, naming nothing. A tokenizer smaller than the embedding (vocabularies padded
    to a multiple of 64) is fine."""
    from nanoalign.tasks import arith
    tok = arith.build_tokenizer()                                # 262 tokens, ids 0-261
    save_model(tiny(1, vocab_size=tok.vocab_size + 6), tmp_path / "padded", tok)
    assert load(str(tmp_path / "padded"))[1].vocab_size == tok.vocab_size
    save_model(tiny(1, vocab_size=tok.vocab_size - 2), tmp_path / "short", tok)
    last = [tok.tok.id_to_token(i) for i in (tok.vocab_size - 2, tok.vocab_size - 1)]
    with pytest.raises(CheckpointError) as e:
        load(str(tmp_path / "short"))
    msg = str(e.value)
    assert "short/tokenizer.json" in msg and "vocab_size" in msg and str(tok.vocab_size - 2) in msg
    assert all(repr(t) in msg for t in last) and "2 tokens" in msg


def test_never_unpickles(saved):
    (saved / "pytorch_model.bin").write_bytes(b"not a pickle")
    os.remove(saved / "model.safetensors")
    with pytest.raises(CheckpointError, match="safetensors only"):
        load(str(saved))


# -- GGUF files (model/gguf_import.py) -----------------------------------------------------------
def write_gguf(path, model, pre="gpt-2", extra_tensors=()):
    """A float32 llama.cpp GGUF of `model`, written as llama.cpp's converter writes one: Q and K rows
    permuted to its RoPE layout, head_dim as attention.key_length, a byte-level BPE vocabulary."""
    gguf = pytest.importorskip("gguf")
    cfg = model.cfg
    w = gguf.GGUFWriter(str(path), "llama")
    for key, v in [("block_count", cfg.n_layers), ("context_length", cfg.max_seq_len),
                   ("embedding_length", cfg.dim), ("feed_forward_length", cfg.hidden_dim),
                   ("attention.head_count", cfg.n_heads), ("attention.head_count_kv", cfg.n_kv_heads),
                   ("attention.key_length", cfg.head_dim), ("attention.value_length", cfg.head_dim)]:
        w.add_uint32(f"llama.{key}", v)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", cfg.norm_eps)
    w.add_float32("llama.rope.freq_base", cfg.rope_theta)
    tokens = [f"<{i}>" for i in range(3)] + [chr(c) for c in range(33, 33 + cfg.vocab_size - 4)] + ['!"']
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_string("tokenizer.ggml.pre", pre)
    w.add_array("tokenizer.ggml.tokens", tokens)
    w.add_array("tokenizer.ggml.token_type", [3] * 3 + [1] * (len(tokens) - 3))
    w.add_array("tokenizer.ggml.merges", ["! \""])
    w.add_uint32("tokenizer.ggml.bos_token_id", 1)
    w.add_uint32("tokenizer.ggml.eos_token_id", 2)

    def permute(t, n_head):      # llama.cpp's converter, LlamaModel.permute
        return t.reshape(n_head, 2, t.shape[0] // n_head // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)

    names = {v: k for k, v in gguf_import.NAMES.items()}
    sd = model.state_dict()
    w.add_tensor("token_embd.weight", sd["embed_tokens.weight"].numpy())
    w.add_tensor("output_norm.weight", sd["norm.weight"].numpy())
    w.add_tensor("output.weight", sd["lm_head.weight"].numpy())
    for i in range(cfg.n_layers):
        for hf_name, g_name in names.items():
            t = sd[f"layers.{i}.{hf_name}.weight"]
            t = permute(t, cfg.n_heads) if g_name == "attn_q" else \
                permute(t, cfg.n_kv_heads) if g_name == "attn_k" else t
            w.add_tensor(f"blk.{i}.{g_name}.weight", t.numpy())
    for name, t in extra_tensors:
        w.add_tensor(name, t.numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def test_a_gguf_converts_back_to_the_model_it_was_made_from(tmp_path):
    m = tiny(head_dim=16)                                    # 4 heads of 16 in a width of 48
    gguf_import.convert(write_gguf(tmp_path / "m.gguf", m), str(tmp_path / "out"))
    back, _ = load_model(str(tmp_path / "out"))
    x = torch.randint(0, 101, (2, 9))
    with torch.no_grad():
        assert (back.logits(back(x)) - m.logits(m(x))).abs().max() < 1e-5


def test_a_gguf_whose_conversion_would_be_wrong_is_refused(tmp_path):
    # Llama 3's pre-tokenizer splits text by another regex than GPT-2's; Llama 3.1's RoPE scaling
    # travels as the factors of a rope_freqs tensor
    with pytest.raises(SystemExit, match=r"m\.gguf: tokenizer\.ggml\.pre 'llama-bpe'"):
        gguf_import.convert(write_gguf(tmp_path / "m.gguf", tiny(), pre="llama-bpe"), str(tmp_path / "a"))
    with pytest.raises(SystemExit, match=r"n\.gguf: tensor 'rope_freqs\.weight'"):
        gguf_import.convert(write_gguf(tmp_path / "n.gguf", tiny(), extra_tensors=[
            ("rope_freqs.weight", torch.ones(6))]), str(tmp_path / "b"))
