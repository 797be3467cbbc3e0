"""
Hugging Face Llama/Mistral model directories in and out: config.json <-> ModelConfig, and the weights
in model.safetensors (or shards listed in model.safetensors.index.json).

Only safetensors and JSON are ever read (model/files.py); nothing here can run code from a
downloaded file. Every failure is a `CheckpointError` whose message names the file and the field or
tensor. Our parameter names are the Hugging Face ones without the "model." prefix (model/model.py),
so a state dict maps one for one.
"""
import difflib
import os
import re

import torch
from safetensors.torch import save_file

from model.files import CheckpointError, atomic_write_json, open_safetensors, read_json_object
from model.model import ModelConfig, Transformer, rope_frequencies

ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}

# config.json key -> ModelConfig field
HF_KEYS = {"vocab_size": "vocab_size", "hidden_size": "dim", "num_hidden_layers": "n_layers",
           "num_attention_heads": "n_heads", "num_key_value_heads": "n_kv_heads",
           "intermediate_size": "hidden_dim", "head_dim": "head_dim", "rms_norm_eps": "norm_eps",
           "rope_theta": "rope_theta", "rope_scaling": "rope_scaling",
           "sliding_window": "sliding_window", "max_position_embeddings": "max_seq_len",
           "tie_word_embeddings": "tie_embeddings", "bos_token_id": "bos_token_id",
           "eos_token_id": "eos_token_id", "pad_token_id": "pad_token_id"}
REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "intermediate_size")
# what transformers' LlamaConfig / MistralConfig assume for a field config.json leaves out (ModelConfig's
# own defaults are another model's: hand-written and Llama-1 era configs omit some of these fields)
HF_DEFAULTS = {"llama": {"rms_norm_eps": 1e-6, "max_position_embeddings": 2048},
               "mistral": {"rms_norm_eps": 1e-6, "max_position_embeddings": 4096 * 32,
                           "num_key_value_heads": 8, "sliding_window": 4096}}


# -- config.json ---------------------------------------------------------------------------------
def config_from_hf(path):
    """Read config.json into a ModelConfig, naming the file and field on any problem."""
    hf = read_json_object(path)
    mt = hf.get("model_type")
    if mt not in ARCHITECTURES:
        raise CheckpointError(f"{path}: field 'model_type' is {mt!r}; nanoalign supports "
                              f"{sorted(ARCHITECTURES)} (Llama and Mistral architectures)")
    for k in REQUIRED:
        if k not in hf:
            raise CheckpointError(f"{path}: required field '{k}' is missing")
    kw = {"model_type": mt}
    hf = {**HF_DEFAULTS[mt], **hf}
    for k, field_name in HF_KEYS.items():
        if hf.get(k) is not None:
            kw[field_name] = hf[k]
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):   # null: no such token (absent: 1 / 2)
        if k in hf and hf[k] is None:
            kw[HF_KEYS[k]] = None
    if hf.get("num_key_value_heads") is None:   # transformers: null (for Llama, absent too) = one per
                                                # query head; Mistral's absent one is HF_DEFAULTS' 8
        kw["n_kv_heads"] = hf["num_attention_heads"]
    rp = hf.get("rope_parameters")  # transformers >= 5 moves rope_theta/rope_scaling here
    if isinstance(rp, dict):
        kw.setdefault("rope_theta", rp.get("rope_theta", 10000.0))
        if rp.get("rope_type", "default") != "default":
            kw["rope_scaling"] = rp
    rs = kw.get("rope_scaling")
    if rs is not None:      # checked here, so that a bad one names config.json and not a KeyError
        kind = rs.get("rope_type", rs.get("type")) if isinstance(rs, dict) else "?"
        if kind not in (None, "default", "llama3"):
            raise CheckpointError(f"{path}: field 'rope_scaling' is {rs!r}; only the 'llama3' type is "
                                  f"supported")
        if kind == "llama3" and "original_max_position_embeddings" not in rs:   # as transformers reads it
            kw["rope_scaling"] = rs = {**rs, "original_max_position_embeddings": hf.get(
                "original_max_position_embeddings", hf["max_position_embeddings"])}
        for k in ("factor", "original_max_position_embeddings") if kind == "llama3" else ():
            if isinstance(rs.get(k), bool) or not isinstance(rs.get(k), (int, float)):
                raise CheckpointError(f"{path}: field 'rope_scaling' needs a number '{k}' for the "
                                      f"'llama3' type, got {rs.get(k)!r}")
    if hf.get("hidden_act", "silu") != "silu" or hf.get("attention_bias") or hf.get("mlp_bias"):
        raise CheckpointError(f"{path}: hidden_act/attention_bias/mlp_bias variants are not "
                              f"supported (need silu, no biases)")
    for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"):
        if not isinstance(hf[k], int) or hf[k] <= 0:
            raise CheckpointError(f"{path}: field '{k}' must be a positive integer, got {hf[k]!r}")
    if mt == "llama":
        kw.pop("sliding_window", None)
    try:
        return ModelConfig(**kw)
    except (AssertionError, TypeError) as e:
        raise CheckpointError(f"{path}: inconsistent fields ({e})") from None


def config_to_hf(cfg: ModelConfig, dtype=torch.float32):
    hf = {"architectures": [ARCHITECTURES[cfg.model_type]], "model_type": cfg.model_type,
          "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
          "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True,
          "torch_dtype": str(dtype).replace("torch.", "")}
    for k, field_name in HF_KEYS.items():
        hf[k] = getattr(cfg, field_name)
    if cfg.model_type == "llama":
        del hf["sliding_window"]
    return hf


# -- weights -------------------------------------------------------------------------------------
def _hf_name(name):
    return name if name.startswith("lm_head.") else "model." + name


def _weight_files(d):
    """{HF tensor name: file} of a sharded checkpoint, or {None: file} of a single-file one."""
    single, index = os.path.join(d, "model.safetensors"), os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(single):
        return {None: single}
    if os.path.exists(index):
        wm = read_json_object(index).get("weight_map")
        if not isinstance(wm, dict):
            raise CheckpointError(f"{index}: field 'weight_map' is missing or not an object")
        return {k: os.path.join(d, v) for k, v in wm.items()}
    raise CheckpointError(f"{d}: no model.safetensors or model.safetensors.index.json "
                          f"(nanoalign loads safetensors only, never pickled .bin files)")


def _read_tensor(h, path, hf_name, shape=None):
    """Tensor `hf_name` of an open safetensors file, checked against the shape config.json implies."""
    if hf_name not in h.keys():
        raise CheckpointError(f"{path}: tensor '{hf_name}' is missing")
    try:
        t = h.get_tensor(hf_name)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read tensor '{hf_name}' ({e})") from None
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise CheckpointError(f"{path}: tensor '{hf_name}' has shape {tuple(t.shape)}, "
                              f"config.json implies {tuple(shape)}")
    return t


def _check_all_used(path, names, expected, cfg, config_path):
    """Every tensor of a weights file must be one config.json describes: a file of 4 layers under a
    config of 2 would otherwise load as a silently truncated model. Skipped, as transformers skips
    them: the per-layer `rotary_emb.inv_freq` buffers of old Llama checkpoints (both recompute them
    from config.json), and under tie_word_embeddings an `lm_head.weight` (_check_tied_head)."""
    unused = sorted(n for n in names if n not in expected and not n.endswith("rotary_emb.inv_freq")
                    and not (cfg.tie_embeddings and n == "lm_head.weight"))
    if not unused:
        return
    layers = [int(m.group(1)) for n in unused if (m := re.match(r"model\.layers\.(\d+)\.", n))]
    hint = (f"; {config_path}: field 'num_hidden_layers' is {cfg.n_layers}, but this file holds "
            f"tensors of layer {max(layers)}" if layers and max(layers) >= cfg.n_layers else "")
    first = ", ".join(unused[:3]) + (", ..." if len(unused) > 3 else "")
    raise CheckpointError(f"{path}: {len(unused)} tensor(s) that {config_path} does not describe "
                          f"would go unused ({first}){hint}")


def _near(d):
    """'; did you mean checkpoints/smollm2-135m?' for a directory that does not exist, where a
    directory beside it has a close name (a character dropped, a typo), else ''."""
    parent, name = os.path.split(os.path.normpath(d))
    try:
        dirs = [x for x in os.listdir(parent or ".") if os.path.isdir(os.path.join(parent, x))]
    except OSError:                     # the parent is missing too
        return ""
    close = difflib.get_close_matches(name, dirs, n=1, cutoff=0.8)
    return f"; did you mean {os.path.join(parent, close[0])}?" if close else ""


def load_model(d, dtype=torch.float32, device="cpu"):
    """Load a Hugging Face Llama/Mistral directory into a Transformer. Returns (model, cfg).
    Every tensor config.json describes must be there with its shape, and every tensor there must be
    one config.json describes (except the few that transformers knowingly skips: _check_all_used)."""
    if not os.path.isdir(d):
        raise CheckpointError(f"{d}: {'not a directory' if os.path.exists(d) else 'does not exist' + _near(d)}")
    config_path = os.path.join(d, "config.json")
    if not os.path.exists(config_path) and os.path.isfile(os.path.join(d, "ckpt", "config.json")):
        # a run's --out_dir given for its checkpoint
        raise CheckpointError(f"{d}: no config.json; the checkpoint of the run there is {os.path.join(d, 'ckpt')}")
    cfg = config_from_hf(config_path)
    with torch.device("meta"):
        model = Transformer(cfg)
    files = _weight_files(d)
    expected = {_hf_name(n): p.shape for n, p in model.named_parameters()}
    state, handles = {}, {}
    try:
        for path in dict.fromkeys(files.values()):   # every file once, in the order listed
            handles[path] = open_safetensors(path)
            _check_all_used(path, handles[path].keys(), expected, cfg, config_path)
        for hf_name, shape in expected.items():
            path = files.get(hf_name, files.get(None))
            if path is None:
                raise CheckpointError(f"{d}/model.safetensors.index.json: tensor '{hf_name}' is not "
                                      f"in the weight_map")
            state[hf_name[6:] if hf_name.startswith("model.") else hf_name] = \
                _read_tensor(handles[path], path, hf_name, shape).to(dtype)
        if cfg.tie_embeddings:
            _check_tied_head(handles, files, config_path)
    finally:
        handles.clear()
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    model.load_state_dict(state, assign=True, strict=True)
    if cfg.tie_embeddings:  # assign=True replaced the tied Parameter; tie it again
        model.lm_head.weight = model.embed_tokens.weight
    model.inv_freq = rope_frequencies(cfg)  # buffers were built on the meta device
    return model.to(device), cfg


def _check_tied_head(handles, files, config_path):
    """Under tie_word_embeddings a stored lm_head.weight is allowed only as a copy of the embedding
    (torch-saved checkpoints hold both names). transformers unties a different one and uses it;
    tying it away here would silently load another model."""
    for path, h in handles.items():
        if "lm_head.weight" in h.keys():
            name = "model.embed_tokens.weight"
            embed_path = files.get(name, files.get(None))
            embedding = _read_tensor(handles[embed_path], embed_path, name)
            if not torch.equal(_read_tensor(h, path, "lm_head.weight", embedding.shape), embedding):
                raise CheckpointError(f"{path}: tensor 'lm_head.weight' differs from '{name}', but "
                                      f"{config_path}: field 'tie_word_embeddings' is true (one "
                                      f"tensor for both)")


def parameters_to_save(model, state=None):
    """{name: tensor} of the model's parameters, a tied weight once; `state` is a full state dict
    gathered elsewhere (FSDP), else the model's own parameters are read."""
    if state is None:
        return {n: p.detach() for n, p in model.named_parameters()}  # lists a tied weight once
    return {n: t for n, t in state.items() if not (model.cfg.tie_embeddings and n == "lm_head.weight")}


def save_model(model: Transformer, d, tokenizer=None, dtype=None, state=None):
    """Write config.json + model.safetensors + generation_config.json (+ the tokenizer's files) in
    the Hugging Face layout. generation_config's eos_token_id lists every stop id of the tokenizer
    (EOS and the chat template's end of turn), so transformers' generate() stops where ours does."""
    if getattr(model, "lora", None):
        raise ValueError("save_model: this model has LoRA adapters; save_adapters() them, or "
                         "model.lora.merge() it first")
    os.makedirs(d, exist_ok=True)
    sd = {_hf_name(n): (t.to(dtype) if dtype else t).contiguous().cpu()
          for n, t in parameters_to_save(model, state).items()}
    dt = next(iter(sd.values())).dtype
    save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    atomic_write_json(config_to_hf(model.cfg, dt), os.path.join(d, "config.json"))
    eos = model.cfg.eos_token_id
    if tokenizer is not None:
        tokenizer.save(d)
        stop = tokenizer.stop_ids
        eos = stop[0] if len(stop) == 1 else stop or eos
    gen = {"bos_token_id": model.cfg.bos_token_id, "eos_token_id": eos}
    atomic_write_json(gen, os.path.join(d, "generation_config.json"))
