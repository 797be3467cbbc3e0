"""
A self-contained Llama / Mistral decoder, written so you can read it top to bottom.

The model is the Hugging Face `LlamaForCausalLM` / `MistralForCausalLM` architecture, with parameter
names chosen to match their safetensors checkpoints one for one less their `model.` prefix (which
model/hf.py strips on load and adds on save), so a checkpoint loads with a plain `load_state_dict`
and what we save loads back in `transformers`:

    tokens -> embed_tokens -> n_layers x [ RMSNorm -> attention (RoPE, GQA, optional sliding window)
                                          + RMSNorm -> SwiGLU MLP ] -> RMSNorm -> hidden states
    hidden states -> lm_head -> logits

Three things differ from the usual nanoGPT-style file, all on purpose:
- `forward` returns the final hidden states, not logits. Alignment losses only need log-probs of the
  response tokens, and kernels/seq_logprob.py computes those straight from (hidden, lm_head weight)
  without ever holding the (tokens x vocab) logits. `logits()` is the separate call for sampling.
- `forward` takes an optional `KVCache` (model/kv_cache.py), so generation (model/generate.py) is
  a prefill and then a loop of one-token forwards (or, compiled, of generate.py's fixed-shape
  `decode_step` on a `StaticKVCache`). Rows may be left-padded: `attn_mask` marks real tokens,
  positions count from each row's first real token, and padded keys are never attended to.
- When a gradient is needed, RMSNorm and the SwiGLU product keep only their inputs for backward
  and compute the rest again there (`RecomputeInBackward`): less memory for a few elementwise
  passes, and the same gradients bit for bit.
"""
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

try:   # torch >= 2.10: flash-attention for packed rows on CUDA (PackedRows)
    from torch.nn.attention.varlen import varlen_attn
except ImportError:
    varlen_attn = None


class TooLongForContext(ValueError):
    """A sequence longer than the model's context (max_position_embeddings): its own type, with its
    numbers, so that a caller can say what made it long (the judge's prompt, say)."""

    def __init__(self, what, n, context):
        super().__init__(f"{what} of {n} tokens is longer than the model's context "
                         f"(max_position_embeddings = {context})")
        self.n, self.context = n, context


@dataclass
class ModelConfig:
    vocab_size: int = 32000
    dim: int = 4096                       # hidden_size
    n_layers: int = 32                    # num_hidden_layers
    n_heads: int = 32                     # num_attention_heads
    n_kv_heads: int = 8                   # num_key_value_heads (GQA: n_heads % n_kv_heads == 0)
    hidden_dim: int = 14336               # intermediate_size of the SwiGLU MLP
    head_dim: Optional[int] = None        # defaults to dim // n_heads
    norm_eps: float = 1e-5                # rms_norm_eps
    rope_theta: float = 10000.0
    rope_scaling: Optional[dict] = None   # Llama-3 style: {"rope_type": "llama3", "factor": 8.0, ...}
    sliding_window: Optional[int] = None  # Mistral: attend to at most this many previous tokens
    max_seq_len: int = 4096               # max_position_embeddings
    tie_embeddings: bool = False          # tie_word_embeddings
    model_type: str = "llama"             # "llama" or "mistral" (only changes the saved config.json)
    bos_token_id: Optional[int] = 1
    eos_token_id: object = 2              # an int, or a list of ints (Llama 3 has several)
    pad_token_id: Optional[int] = None

    def __post_init__(self):
        if self.head_dim is None:
            self.head_dim = self.dim // self.n_heads
        assert self.n_heads % self.n_kv_heads == 0, "n_heads must be a multiple of n_kv_heads"

    @property
    def eos_ids(self):
        e = self.eos_token_id
        return [] if e is None else ([e] if isinstance(e, int) else list(e))


# Named presets. "tiny" is the built-in task's default: small enough to SFT in a minute on a laptop.
PRESETS = {
    "tiny": dict(vocab_size=264, dim=128, n_layers=4, n_heads=4, n_kv_heads=2, hidden_dim=352,
                 max_seq_len=512, tie_embeddings=True, bos_token_id=256, eos_token_id=257,
                 pad_token_id=258),
    "smollm2-135m": dict(vocab_size=49152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3,
                         hidden_dim=1536, rope_theta=100000.0, max_seq_len=8192,
                         tie_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2),
    "mistral-7b": dict(vocab_size=32000, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                       hidden_dim=14336, max_seq_len=32768, model_type="mistral"),
    "llama3-8b": dict(vocab_size=128256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                      hidden_dim=14336, rope_theta=500000.0, max_seq_len=8192,
                      bos_token_id=128000, eos_token_id=128001),
}


def config_from_preset(name, **overrides):
    return ModelConfig(**{**PRESETS[name], **overrides})


class RecomputeInBackward(torch.autograd.Function):
    """
    y = fn(*inputs), keeping only the inputs for backward and running fn again there.

    For the cheap elementwise pieces between the matmuls: RMSNorm's normalization and SwiGLU's
    silu(gate) * up. Called plainly, autograd keeps their intermediates for backward (the
    normalized x; silu(gate)), one more (tokens x width) tensor per piece and layer: a quarter of
    what an ORPO step of SmolLM2-135M keeps (1,089 -> 838 MiB; the process's peak RSS fell less,
    see docs/performance.md). Running them again costs a few elementwise passes, no matmul, and no
    time we could measure. backward differentiates the very same fn with autograd, under the
    autocast that forward ran in, so the gradients are bitwise those of fn called plainly
    (tests/model/test_model.py). The trade --grad_checkpoint makes for a whole block, made only
    where it is nearly free (with --grad_checkpoint both apply). First derivatives only: nothing
    here needs a second, and autograd.grad inside backward would give a wrong one, so it refuses.
    """
    @staticmethod
    def forward(ctx, fn, *inputs):
        dev = inputs[0].device.type
        ctx.fn, ctx.autocast = fn, (dev, torch.get_autocast_dtype(dev), torch.is_autocast_enabled(dev))
        ctx.save_for_backward(*inputs)
        return fn(*inputs)                      # autograd.Function runs forward without grad

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():     # backward(create_graph=True): a double backward
            raise RuntimeError("RecomputeInBackward gives first derivatives only")
        dev, dtype, on = ctx.autocast
        needs = ctx.needs_input_grad[1:]                   # [0] is fn's
        inputs = [t.detach().requires_grad_(need) for t, need in zip(ctx.saved_tensors, needs)]
        with torch.enable_grad(), torch.autocast(dev, dtype=dtype, enabled=on):
            y = ctx.fn(*inputs)
        wanted = [t for t in inputs if t.requires_grad]
        grads = iter(torch.autograd.grad(y, wanted, grad))
        return (None, *(next(grads) if t.requires_grad else None for t in inputs))


def lean(fn, *inputs):
    """fn(*inputs), through RecomputeInBackward when a backward will need it, else plainly."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        return RecomputeInBackward.apply(fn, *inputs)
    return fn(*inputs)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return lean(self.norm, x, x, self.weight)

    def norm(self, x, x_for_rms, weight):
        # normalize in float32 like the reference, then cast back before the scale (as HF does).
        # x_for_rms is x again: x goes in once per use, so that RecomputeInBackward hands back its
        # two gradient terms apart and autograd sums them with the skip connection's in the order
        # it does for the plain expression (bitwise the same gradients, tests/model/test_model.py)
        r = torch.rsqrt(x_for_rms.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * (x.float() * r).to(x.dtype)


def rope_frequencies(cfg):
    """Inverse frequencies of the rotary embedding, (head_dim // 2,), with Llama-3 scaling if set."""
    hd = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    rs = cfg.rope_scaling
    if rs and rs.get("rope_type", rs.get("type")) == "llama3":
        # Llama 3.1: leave high frequencies alone, divide low ones by `factor`, blend in between.
        factor, lo, hi = rs["factor"], rs.get("low_freq_factor", 1.0), rs.get("high_freq_factor", 4.0)
        old_len = rs["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_len / wavelen - lo) / (hi - lo)
        blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        inv_freq = torch.where(wavelen > old_len / lo, inv_freq / factor,
                               torch.where(wavelen < old_len / hi, inv_freq, blended))
    elif rs and rs.get("rope_type", rs.get("type")) not in (None, "default"):
        raise ValueError(f"rope_scaling type {rs} is not supported (only 'llama3')")
    return inv_freq.float()


def apply_rope(x, cos, sin):
    # x: (B, nh, T, hs); cos/sin: (B, 1, T, hs). HF's "rotate_half" layout: first half / second half.
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        self.cfg, self.layer = cfg, layer       # layer: this block's index, its slot in a KVCache
        hd, nh, nkv = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
        self.q_proj = nn.Linear(cfg.dim, nh * hd, bias=False)
        self.k_proj = nn.Linear(cfg.dim, nkv * hd, bias=False)
        self.v_proj = nn.Linear(cfg.dim, nkv * hd, bias=False)
        self.o_proj = nn.Linear(nh * hd, cfg.dim, bias=False)

    def forward(self, x, cos, sin, mask, cache):
        B, T, _ = x.shape
        nh, nkv, hd = self.cfg.n_heads, self.cfg.n_kv_heads, self.cfg.head_dim   # hd: "hs" below
        q, k, v = self.qkv(x)                                    # (B, T, nh * hs), (B, T, nkv * hs) x 2
        q = q.view(B, T, nh, hd).transpose(1, 2)                 # (B, nh, T, hs)
        k = k.view(B, T, nkv, hd).transpose(1, 2)                # (B, nkv, T, hs)
        v = v.view(B, T, nkv, hd).transpose(1, 2)                # (B, nkv, T, hs)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # GQA: each group of n_heads // n_kv_heads query heads shares one key/value head;
        # enable_gqa lets SDPA broadcast instead of copying the cache n_heads // n_kv_heads times
        out_dtype = v.dtype    # what the linears compute in (v has no RoPE, whose float32 cos/sin
                               # promote q and k under autocast): the result goes back to it for o_proj
        if cache is not None:    # generation: store this step's keys/values, attend to all so far
            k, v = cache.update(self.layer, k, v)                # (B, nkv, S, hs)
        dt = attention_dtype(q.device, out_dtype, cache_dtype=None if cache is None else k.dtype)
        with torch.autocast(q.device.type, enabled=False):      # dt says it all: autocast stays out
            q, k, v = q.to(dt), k.to(dt), v.to(dt)
            if isinstance(mask, PackedRows):                     # padding-free rows, B = 1
                y = mask.attention(q, k, v, nh != nkv)           # (1, nh, N, hs)
            else:                                                # (B, nh, T, hs)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=nh != nkv)
        y = y.to(out_dtype)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, nh * hd))   # (B, nh, T, hs) -> (B, T, nh * hs)

    def qkv(self, x):
        """The three projections of x. A method of its own because decoding on the CPU replaces it
        with one product against the three weights packed as one (model/cpu_pack.py): at batch 1 a
        step is mostly reading weights, and one larger matrix reads faster than three small ones."""
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)


def attention_dtype(device, compute, cache_dtype=None):
    """The dtype attention runs in, whatever autocast says.
    - CPU: float32 (float64 for float64 weights), also under bf16 autocast or with bf16 weights:
      torch's CPU attention kernels ran bf16 1.7-2.4x slower than float32 on training rows of ~100
      tokens and 2.7-5.2x slower on one query row while decoding (an AMD EPYC; docs/performance.md,
      "A profile of both steps" and "Attention in float32 while decoding"). From 512 tokens a row
      float32 was 3-10% slower; the rows this project trains on a CPU are shorter. q, k and v are
      small beside the weights, so their casts cost little. While decoding the cache's dtype,
      which generate() keeps float32 on the CPU.
    - CUDA: the dtype the linears compute in (`compute`: autocast's bf16, else the weights'), where
      the flash kernels run, the packed rows' varlen one among them; with a cache, the cache's dtype,
      the same one (generate() makes it in the compute dtype there)."""
    if cache_dtype is not None:
        return cache_dtype
    if torch.device(device).type == "cpu":
        return torch.promote_types(compute, torch.float32)
    return compute


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.down_proj = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)

    def forward(self, x):
        return self.down_proj(lean(swiglu, *self.gate_up(x)))

    def gate_up(self, x):
        """Both input projections of x; one packed product while decoding on the CPU, as
        Attention.qkv."""
        return self.gate_proj(x), self.up_proj(x)


def swiglu(gate, up):
    return F.silu(gate) * up


class Block(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        # no padding_idx, where transformers passes pad_token_id: that row would get no gradient from
        # the inputs, and a pad token can be a real one (SmolLM2's is its EOS <|im_end|>, which ends
        # every chat turn) that would then never train as an input. Every other gradient is
        # transformers' (docs/performance.md, "Our DPO and SFT step by step beside TRL's")
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.register_buffer("inv_freq", rope_frequencies(cfg), persistent=False)
        self.apply(self._init_weights)
        # activation checkpointing (train.py --grad_checkpoint): blocks 0, k, 2k, ... keep only
        # their input and run again in backward (0 = none, 1 = every block, 2 = every other one).
        # Each checkpointed block costs its forward once more and saves all it would have kept
        self.checkpoint_every = 0

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    # -- the forward pass -----------------------------------------------------------------------
    def forward(self, idx, attn_mask=None, cache=None, cu_seqlens=None):
        """
        idx: (B, T) token ids. attn_mask: (B, S) with 1 for real tokens and 0 for (left) padding,
        where S = T without a cache and S = cache.pos + T with one (the mask of everything so far).
        cache: None for a plain forward, else a KVCache that these T positions are appended to.
        cu_seqlens: padding-free rows (training only, see PackedRows): idx is (1, N), R rows back to
        back, row r being idx[0, cu_seqlens[r]:cu_seqlens[r + 1]]; attn_mask and cache stay None.
        Returns the final hidden states (B, T, dim) -- apply `logits()` or the fused kernels to them.
        """
        if cu_seqlens is not None:
            return self._packed_forward(idx, PackedRows(cu_seqlens, self.cfg.sliding_window))
        B, T = idx.shape
        start = 0 if cache is None else cache.pos
        S = start + T
        if S > self.cfg.max_seq_len:
            raise TooLongForContext("sequence", S, self.cfg.max_seq_len)
        if cache is not None and S > cache.max_len:
            raise ValueError(f"{S} positions do not fit a KV cache of {cache.max_len}")
        device = idx.device
        if attn_mask is None:
            attn_mask = torch.ones(B, S, dtype=torch.long, device=device)
        attn_mask = attn_mask.to(torch.long)
        # positions count real tokens only, so a left-padded row starts at position 0
        pos_all = (attn_mask.cumsum(-1) - 1).clamp(min=0)        # (B, S)
        pos = pos_all[:, start:S]                                # (B, T)
        freqs = pos[..., None].float() * self.inv_freq           # (B, T, hs/2)
        emb = torch.cat((freqs, freqs), dim=-1)                  # (B, T, hs)
        x = self.embed_tokens(idx)
        cos, sin = emb.cos()[:, None].to(x.dtype), emb.sin()[:, None].to(x.dtype)  # (B, 1, T, hs)
        # boolean attention mask (True = may attend): causal, not padding, inside the sliding window
        q_idx = torch.arange(start, S, device=device)[:, None]  # (T, 1)
        k_idx = torch.arange(S, device=device)[None, :]         # (1, S)
        allowed = k_idx <= q_idx
        if self.cfg.sliding_window is not None:
            allowed = allowed & (q_idx - k_idx < self.cfg.sliding_window)
        mask = allowed[None, None] & attn_mask.bool()[:, None, None, :]   # (B, 1, T, S)
        # a padded query row would attend to nothing and give NaN; let it see itself instead
        mask = mask | _diag(T, S, start, device)
        x = self._blocks(x, cos, sin, mask, cache)
        if cache is not None:
            cache.pos = S
        return self.norm(x)

    def _packed_forward(self, idx, rows):
        """The padded forward's arithmetic on the real tokens only: RoPE positions restart at 0 in
        every row and attention stays inside it, so each row gets the hidden states a right-padded
        batch gives it, and no matmul runs on a pad."""
        if rows.max_len > self.cfg.max_seq_len:
            raise TooLongForContext("a row", rows.max_len, self.cfg.max_seq_len)
        freqs = rows.positions[None, :, None].float() * self.inv_freq     # (1, N, hs/2)
        emb = torch.cat((freqs, freqs), dim=-1)                          # (1, N, hs)
        x = self.embed_tokens(idx)
        cos, sin = emb.cos()[:, None].to(x.dtype), emb.sin()[:, None].to(x.dtype)  # (1, 1, N, hs)
        return self.norm(self._blocks(x, cos, sin, rows, None))

    def _blocks(self, x, cos, sin, mask, cache):
        for i, layer in enumerate(self.layers):
            k = self.checkpoint_every
            if k and i % k == 0 and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, mask, cache,
                                                      use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, cache)
        return x

    def logits(self, hidden):
        """(…, dim) hidden states -> (…, vocab) logits in float32, for sampling, judging and tests;
        training scores its tokens without them (kernels/seq_logprob.py)."""
        return self.lm_head(hidden).float()

    def num_params(self):
        return sum(p.numel() for p in self.parameters())


class PackedRows:
    """The attention 'mask' of R rows packed back to back into one sequence of N tokens: causal
    inside each row, nothing across rows (block-diagonal), kept as the row boundaries `cu_seqlens`
    (R + 1,) rather than as an (N, N) tensor.

    How each device attends (the choice measured in docs/performance.md, padding-free batches):
    - CUDA: torch's flash-attention varlen kernel (`torch.nn.attention.varlen`), which walks the
      rows' own (Ti, Ti) blocks and nothing else; it is built into torch (no flash-attn package),
      needs no compile for each new N, and takes GQA and the sliding window as they are. It runs
      in bf16/fp16 only (autocast, train.py --dtype): float32, or an older torch, takes the CPU's way.
    - CPU: one SDPA call per row (the flash-style CPU kernel, is_causal; in float32 whatever autocast
      says, see attention_dtype). An (N, N) block-diagonal
      boolean mask makes SDPA compute all N^2 scores and then drop most of them (8 rows: 8x the
      work); at SmolLM2-135M's heads it took 1.6-1.7x the per-row calls' time in float32 and
      0.9-1.2x in bf16 (a loaded machine). FlexAttention has no backward on the CPU in torch 2.13.
    Its reference is the padded batch: tests/kernels/test_reference.py
    (test_packed_rows_give_the_padded_rows_log_probs_and_gradients) on the CPU,
    tests/kernels/test_triton.py (test_packed_rows_on_cuda_match_the_padded_batch) on CUDA."""

    def __init__(self, cu_seqlens, window=None):
        self.cu_seqlens = cu_seqlens
        self.bounds = cu_seqlens.tolist()                         # Python ints, read once
        lengths = [e - s for s, e in zip(self.bounds[:-1], self.bounds[1:])]
        self.max_len, self.window = max(lengths, default=0), window
        self.positions = torch.cat([torch.arange(n, device=cu_seqlens.device) for n in lengths]) \
            if lengths else cu_seqlens.new_zeros(0)               # (N,): restart at 0 in each row

    def attention(self, q, k, v, gqa):
        """q (1, nh, N, hs), k and v (1, nkv, N, hs) -> (1, nh, N, hs)."""
        if q.is_cuda and varlen_attn is not None and q.dtype in (torch.bfloat16, torch.float16):
            left = -1 if self.window is None else self.window - 1  # keys i - left .. i
            cu = self.cu_seqlens.to(torch.int32)
            y = varlen_attn(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1), cu, cu,
                            self.max_len, self.max_len, window_size=(left, 0), enable_gqa=gqa)
            return y.transpose(0, 1)[None]                       # (N, nh, hs) -> (1, nh, N, hs)
        ys = []
        for s, e in zip(self.bounds[:-1], self.bounds[1:]):
            mask = None
            if self.window is not None and e - s > self.window:  # the sliding window, inside the row
                i = torch.arange(e - s, device=q.device)
                mask = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < self.window)
            ys.append(F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e],
                                                     attn_mask=mask, is_causal=mask is None,
                                                     enable_gqa=gqa))
        return torch.cat(ys, 2)


def _diag(T, S, start, device):
    """(1, 1, T, S) boolean, True where key index == query index (start + row): a mask for SDPA,
    broadcast over the batch and the heads."""
    return (torch.arange(S, device=device)[None, :] ==
            torch.arange(start, start + T, device=device)[:, None])[None, None]
