"""
How a run computes, once its config's 'auto' settings meet the model and the machine: the autocast
dtype (bf16 on CUDA, and on a CPU where it pays), padding-free batches, activation checkpointing,
fused AdamW, the learning rate, CUDA's deterministic algorithms, and the line that names them all
(train.py's start line). On a CPU every 'auto' turns on from FAST_MIN_PARAMS parameters; below it
the built-in task's tiny model keeps plain float32, so the default run's printed table stays as it
is. On CUDA bf16 autocast and fused AdamW are on at any size.
nanoalign/config.py declares the options; this file reads them. It also says whether a command
line's --device can run here (`device_problem`: sample.py's, the judge's command line's).
"""
import functools
import os
import re

import torch

# --dtype auto and --packed auto, by model size (docs/performance.md#bf16-and-padding-free-batches-on-the-cpu):
# bf16 pays on SmolLM2-135M (1.5-2x a float32 step) and not on the built-in task's 0.77M model
# (3-18% slower: its matmuls are too small to win back the casts). Packing measured ~8% faster on
# the 0.77M model too, but other matmul shapes round differently, and the default run's printed
# table must stay as it is; so both start between the sizes measured
FAST_MIN_PARAMS = 20_000_000


def device_problem(device):
    """Why a command line's --device cannot run here (not cpu, cuda or cuda:N; a GPU this torch does
    not see), or None. sample.py and the judge's command line check it before loading, so a typo is a
    usage error, not a torch traceback after the model has loaded."""
    if not re.fullmatch(r"cpu|cuda(:[0-9]+)?", device):
        return f"--device {device!r}: use cpu, cuda or cuda:N"
    if device.startswith("cuda") and not torch.cuda.is_available():
        return f"--device {device}: this torch sees no CUDA GPU; use --device cpu"
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        return f"--device {device}: this torch sees {n} GPU(s), cuda:0 to cuda:{n - 1}"
    return None


def is_large(model):
    """FAST_MIN_PARAMS or more: where each 'auto' (dtype, packing, checkpointing, fused AdamW) turns on."""
    return sum(q.numel() for q in model.parameters()) >= FAST_MIN_PARAMS


def cpu_has_bf16():
    """bf16 instructions (AVX512-BF16, or AMX on Intel): oneDNN then runs bf16 matmuls natively;
    without them bf16 is emulated and slower than float32. (torch's own checks are private: a torch
    without them counts as a CPU without the instructions.)"""
    return any(getattr(torch.cpu, f, lambda: False)()
               for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


@functools.cache          # train.py asks at every micro-batch; the CPU does not change under it
def cpu_vendor(cpuinfo="/proc/cpuinfo"):
    """The vendor_id of `cpuinfo` ('GenuineIntel', 'AuthenticAMD'), or '' where there is none."""
    try:
        with open(cpuinfo) as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("vendor_id")), "")
    except OSError:
        return ""


def cpu_bf16_trains_faster():
    """Whether bf16 matmuls outrun float32's here, so that training in bf16 pays. Having the
    instructions is not enough (docs/performance.md, bf16 on the CPU): on an Intel Xeon with
    AVX512-BF16 but no AMX, oneDNN's bf16 GEMMs ran at 0.55-0.83x float32's rate and SmolLM2-135M's
    ORPO step took 1.7-1.8x float32's time. On an AMD EPYC with AVX512-BF16, bf16 steps took 0.5-0.7x
    float32's (measured on a busy machine). With AMX, Intel's bf16 matrix tiles, oneDNN multiplies
    bf16 on the tiles; that machine's float32-against-bf16 step was not measured here."""
    if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        return True
    return cpu_has_bf16() and cpu_vendor() == "AuthenticAMD"


def autocast_dtype(cfg, model, decoding=False):
    """--dtype as the autocast dtype of the forwards: torch.bfloat16, or None (plain float32).
    'auto' on a GPU: bf16 where it has bf16 matmuls (sm_80 and later), else float32. 'auto' on a
    CPU, for a model of FAST_MIN_PARAMS or more: bf16 for training where bf16 matmuls are faster
    (cpu_bf16_trains_faster); for decoding (decoding=True: sample.py) wherever the CPU has bf16
    instructions at all, since a decode step mostly reads weights and bf16 halves the bytes."""
    if cfg.dtype != "auto":
        return torch.bfloat16 if cfg.dtype == "bfloat16" else None
    if next(model.parameters()).is_cuda:
        # bf16 where the GPU multiplies in it (sm_80 and later). On a T4 or V100 torch only emulates
        # it (is_bf16_supported() counts emulation unless told not to): slower than float32, and the
        # Triton kernel's bf16 dot and the packed rows' flash-attention varlen kernel need sm_80.
        # float16 there would need a gradient scaler: such a GPU keeps float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else None
    if not is_large(model):
        return None
    return torch.bfloat16 if (cpu_has_bf16() if decoding else cpu_bf16_trains_faster()) else None


@torch.no_grad()
def off_bf16_ties(params):
    """Every float32 weight exactly halfway between two bf16 values, moved onto the one bf16 rounds it
    to (the forward's matmuls read the same numbers as before). A start from a float16 checkpoint
    has 1 in 8 of its weights on such ties, a dequantized GGUF many (SmolLM2-135M-Instruct's Q4_1:
    8.1%), and under bf16 autocast a tie is tipped a whole bf16 step by the first update of any size
    in the gradient's direction: one ORPO step at a rate of 5e-8 took SmolLM2's held-out loss in bf16
    from 2.94 at the start to 2.06 (float32's moved from 2.952 after that step to 2.947 after the
    next; docs/results.md, "bf16 ties"). Off the ties, the
    float32 weights gather the updates until they add up to a bf16 step, as mixed precision means."""
    for p in params:
        if p.dtype == torch.float32:
            tie = (p.view(torch.int32) & 0xFFFF) == 0x8000        # the low 16 bits bf16 drops: 1000...0
            p[tie] = p[tie].bfloat16().float()


def autocast(cfg, model, decoding=False):
    """The context the forwards run in: bfloat16 autocast when autocast_dtype says so (the weights
    and AdamW state stay float32, the matmuls run in bfloat16), else plain float32."""
    dt = autocast_dtype(cfg, model, decoding)
    return torch.autocast(next(model.parameters()).device.type, dtype=dt or torch.bfloat16,
                          enabled=dt is not None)


def packed_batches(cfg, model):
    """--packed: whether micro-batches are made padding-free (nanoalign/data.py pack)."""
    if cfg.packed != "auto":
        return cfg.packed == "true"
    return is_large(model)


def checkpoint_every(cfg, model):
    """--grad_checkpoint as the model's checkpoint_every: 0 (no block), 2 (every other), 1 (all)."""
    choice = cfg.grad_checkpoint
    if choice == "auto":
        choice = "half" if is_large(model) else "false"
    return {"false": 0, "half": 2, "true": 1}[choice]


def compute_of(cfg, model):
    """What a run computes in once each 'auto' is resolved, in words (train.py's start line, and
    bench/train_speed.py's table): 'bfloat16, packed, grad checkpointing half'."""
    return (f"{'bfloat16' if autocast_dtype(cfg, model) else 'float32'}, "
            f"{'packed' if packed_batches(cfg, model) else 'padded'}"
            + {0: "", 1: ", grad checkpointing", 2: ", grad checkpointing half"}[checkpoint_every(cfg, model)])


# --lr 0 (auto): the arith task's small model trains at 3e-4; a pretrained model, of FAST_MIN_PARAMS
# or more (the instruct task's SmolLM2-135M too), at the default of the TRL trainer of the same loss
# (trl 1.16.0: SFTConfig 2e-5; DPOConfig and ORPOConfig 1e-6; OnlineDPOConfig 5e-7, for DPO on the
# policy's own judged samples): at 3e-4 a full fine-tune of one is wrecked within steps. With LoRA
# too, as TRL keeps them.
AUTO_LR = {"small": 3e-4, "sft": 2e-5, "preference": 1e-6, "online": 5e-7}
TRL_MAX_LENGTH = 1024      # DPOConfig, ORPOConfig and SFTConfig's max_length (TRL 1.16)


def max_length_of(cfg, model=None):
    """--max_length, or for 0 (auto) TRL's 1024 where the model's context holds it, else the
    context: a real model's own data is cut where TRL would cut it (128, the default until
    2026-12-08, cut a chat-templated answer of a few sentences). Without a model (a caller that
    tokenizes before or without one: tests, bench, the SJ batches of experiments/), TRL's 1024."""
    context = model.cfg.max_seq_len if model is not None else TRL_MAX_LENGTH
    return cfg.max_length or min(TRL_MAX_LENGTH, context)


def peak_lr(cfg, model, method):
    """--lr, or for 0 (auto) the rate by the model's size and by what the method's loss is: its
    own method.trl_rate(cfg) where it declares one (OSP's RAFT is SFT, on-policy DPO is online),
    else by the examples it eats ('sft' for SFT examples, anything else a preference loss)."""
    if cfg.lr:
        return cfg.lr
    if not is_large(model):
        return AUTO_LR["small"]
    if method.trl_rate:
        return AUTO_LR[method.trl_rate(cfg)]
    return AUTO_LR["sft" if method.eats == "sft" else "preference"]


def make_optimizer(model, cfg):
    """AdamW over the trained weights. Fused (one kernel for all parameters instead of a loop of
    foreach launches, and none of foreach's parameter-sized temporaries) on CUDA, and on the CPU for
    a model of FAST_MIN_PARAMS or more; a smaller one keeps foreach's arithmetic, the one the
    built-in task's printed table was made with."""
    p = next(model.parameters())
    big = is_large(model)
    return torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=0.0,  # set each step
                             betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay,
                             fused=p.is_cuda or big)


def set_deterministic(cfg, device):
    """--deterministic on CUDA (nothing elsewhere); call it before the first cuBLAS handle. An exact
    resume needs one summation order, and CUDA ops built on atomic adds take a new one on every run.
    Not warn_only: under it, flash and memory-efficient attention keep their nondeterministic
    backward (they switch only when determinism is enforced) and cuDNN attention stays eligible, so
    every step's attention gradients would differ from run to run; an op with no deterministic
    version is an error that names it (--deterministic false runs on). cuBLAS reads its workspace
    setting when its handle is first made. Returns whether it is on."""
    if torch.device(device).type != "cuda":
        return False
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(cfg.deterministic)
    return cfg.deterministic
