"""
Greedy decoding speed: nanoalign's generate() beside transformers' generate(), same weights, same
prompts, one run. A script, not a test.

    python -m bench.decode_speed --init_from checkpoints/smollm2-135m        # the CPU table
    python -m bench.decode_speed --ours float32,bf16 --batches 1 --max_new_tokens 16   # a quick look
    python -m bench.decode_speed --model smollm2-1.7b --batches 1,8,32       # on a GPU (bench/gpu.sh)
    python -m bench.decode_speed --products --batches 1,2,4,8,16             # the CPU products alone

Both decode exactly max_new_tokens (EOS ignored) so they do the same work; tokens/s counts the new
tokens of all rows, the prompt's forward included. transformers runs in its own interpreter
(tests/hf_reference.py: the top-level kernels/ would shadow Hugging Face's `kernels` here) and times
its own generate(); the two never run at the same time.

Ours, in each of these settings (--ours picks):
  float32        float32 weights, eager decode: the reference
  bf16           the matmuls in bfloat16, eager. On the CPU: float32 weights under bfloat16
                 autocast, as sample.py --dtype auto samples on a CPU with bf16 instructions (and
                 train.py's on-policy rollouts where it trains in bf16; model/cpu_pack.py packs bf16
                 copies of the weights). On
                 CUDA: bfloat16 weights (sample.py --dtype bfloat16), as a bf16 checkpoint is served
  bf16_compiled  the same, with the compiled static-cache step (model/generate.py, compiled=True;
                 CUDA graphs on a GPU); its compile is done in the untimed first pass
transformers in two: as its users load it (from_pretrained's default, dtype "auto": the dtype
config.json names; float32 for the GGUF import, bfloat16 for --model smollm2-1.7b, which is saved
in it), and in the other of float32 / bfloat16. Each of ours is printed against transformers'
default and against transformers in the same compute dtype.

The bandwidth floor: a decode step reads every weight once, so no step can be faster than the
weights' bytes over the memory bandwidth (measured here: a large copy). "of ceiling" is a setting's
tokens/s over batch x that bound: how much of the step is still something other than reading weights.

--products (CPU only, no transformers): the decode step's matrix products alone, every packed product
of the model once (model/cpu_pack.py, as a step runs them), at each batch size, in bfloat16 and in
float32, beside merely reading as many bytes (a float32 `x.sum()`). It tells where a step's time goes: while the
products take as long as the read, the weights' bytes are the limit (and halving them halves the
step); once they take longer, the CPU's multiply-adds are.
"""
import argparse
import os
import re
import shutil
import sys
import tempfile
import time

import torch

from bench.train_speed import SMOLLM2_1P7B
from model.checkpoint import load
from model.cpu_pack import cpu_packed_linears, packing_units
from model.files import read_json
from model.generate import generate
from tests.hf_reference import Missing, transformers_process

TOPICS = ["the capital of France", "a haiku about the sea", "photosynthesis in one sentence",
          "three prime numbers", "12 times 7", "a famous painter", "why the sky is blue",
          "a synonym for happy"]
PROMPTS = [f"Question {i + 1}: tell me about {TOPICS[i % len(TOPICS)]}." for i in range(32)]
OURS = ("float32", "bf16", "bf16_compiled")
THEIRS = ("default", "other")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--init_from", default="checkpoints/smollm2-135m", help="checkpoint directory (default: %(default)s)")
    ap.add_argument("--model", default="checkpoint", choices=("checkpoint", "smollm2-1.7b"),
                    help="'checkpoint' = --init_from; 'smollm2-1.7b' = random weights of that shape "
                    "in bfloat16 (the real ones are not shipped offline) with --init_from's tokenizer "
                    "(default: %(default)s)")
    ap.add_argument("--layers", type=int, help="fewer layers for --model smollm2-1.7b (a rehearsal "
                    "on the CPU), at least 1; --model checkpoint keeps the checkpoint's own, so --layers "
                    "with it is an error (default: its 24)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="cpu or cuda (default: cuda when a GPU is visible, else cpu; here %(default)s)")
    ap.add_argument("--max_new_tokens", type=int, default=128, help="new tokens per row (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes, at most "
                    f"{len(PROMPTS)} (default: 1,8 on the CPU, 1,8,32 on CUDA)")
    ap.add_argument("--ours", default=",".join(OURS), help=f"comma-separated, from {','.join(OURS)} "
                    "(default: all of them)")
    ap.add_argument("--theirs", default="default,other", help="transformers' settings: 'default' "
                    "(always run: the ratios are over it) and 'other' (float32 or bfloat16, whichever "
                    "the default is not); 'default' alone saves time on a GPU (default: %(default)s)")
    ap.add_argument("--products", action="store_true", help="time the decode step's matrix products "
                    "alone on the CPU (see above) instead of decoding")
    ap.add_argument("--reps", type=int, default=None, help="timed passes per setting after an untimed "
                    "one; the best is printed (a busy machine only ever slows a pass down) (default: 2; "
                    "5 with --products, whose passes take milliseconds)")
    a = ap.parse_args()
    if a.reps is None:
        a.reps = 5 if a.products else 2
    if a.layers is not None and a.model != "smollm2-1.7b":     # only random_1p7b reads it
        ap.error("--layers: --model checkpoint times --init_from, which keeps its own layers; drop "
                 "--layers, or rehearse with --model smollm2-1.7b")
    if a.layers is not None and a.layers < 1:       # random_1p7b's `layers or 24` would build them all
        ap.error(f"--layers {a.layers}: at least 1")
    if a.reps < 1:
        ap.error(f"--reps {a.reps}: at least one timed pass")
    batches = a.batches or ("1,8" if a.device == "cpu" else "1,8,32")
    if not re.fullmatch(r"\d+(,\d+)*", batches):
        ap.error(f"--batches {batches!r}: comma-separated whole numbers, e.g. 1,8")
    a.batches = [int(b) for b in batches.split(",")]
    a.ours, a.theirs = a.ours.split(","), a.theirs.split(",")
    for flag, given, known in (("--ours", a.ours, OURS), ("--theirs", a.theirs, THEIRS)):
        if bad := [s for s in given if s not in known]:      # a run without it would not say so
            ap.error(f"{flag} {','.join(map(repr, bad))}: unknown; choose from {', '.join(known)}")
    if bad := [b for b in a.batches if not 1 <= b <= len(PROMPTS)]:
        ap.error(f"--batches {bad}: each from 1 to {len(PROMPTS)}")
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.products:
        if a.device != "cpu" or a.model != "checkpoint":
            ap.error("--products times the CPU's packed products of --init_from: --device cpu only")
        return products(a)
    work = tempfile.mkdtemp(prefix="decode_speed_")
    try:
        path = a.init_from if a.model == "checkpoint" else random_1p7b(a.init_from, work, a.layers)
        with transformers_process(torch.get_num_threads()) as hf:
            run(a, hf, path)
    except Missing as e:
        sys.exit(f"error: {e}; this benchmark compares with it (pip install transformers)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def random_1p7b(tokenizer_dir, work, layers=None):
    """SmolLM2-1.7B's shape, random weights saved in bfloat16, --init_from's tokenizer."""
    from model.checkpoint import save_model
    from model.model import Transformer, config_from_preset
    _, tok = load(tokenizer_dir)
    torch.manual_seed(0)
    d = os.path.join(work, "smollm2-1.7b")
    shape = {**SMOLLM2_1P7B, "n_layers": layers or SMOLLM2_1P7B["n_layers"]}
    save_model(Transformer(config_from_preset("smollm2-135m", **shape)), d, tok, dtype=torch.bfloat16)
    return d


def bandwidth(device):
    """Bytes per second of a large copy (read + write), the best of three."""
    x = torch.empty(2**28 if device == "cuda" else 2**26, dtype=torch.float32, device=device)  # 1 GiB / 256 MiB
    y, best = torch.empty_like(x), 0.0
    for _ in range(4):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        y.copy_(x)
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * x.numel() * 4 / (time.perf_counter() - t0))
    return best


def settings(device, name):
    """(weights' dtype, autocast dtype or None, compiled) of one of ours."""
    if name == "float32":
        return torch.float32, None, False
    if device == "cpu":
        return torch.float32, torch.bfloat16, name == "bf16_compiled"
    return torch.bfloat16, None, name == "bf16_compiled"


def run(a, hf, path):
    conf = read_json(os.path.join(path, "config.json"))
    auto = conf.get("dtype") or conf.get("torch_dtype") or "float32"     # what dtype "auto" loads
    theirs = {"default": hf.model(path, "auto", a.device)}
    for dt in ("float32", "bfloat16"):
        if dt != auto and "other" in a.theirs:
            theirs[dt] = hf.model(path, dt, a.device)
    bw = bandwidth(a.device)
    models = {}
    for name in a.ours:
        wd = settings(a.device, name)[0]
        if wd not in models:
            models[wd] = load(path, wd, a.device)
    tok = next(iter(models.values()))[1]
    n_params = sum(p.numel() for p in next(iter(models.values()))[0].parameters())
    dev = torch.cuda.get_device_name() if a.device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"greedy decoding, {a.max_new_tokens} new tokens, {path} ({n_params / 1e6:.0f}M parameters), "
          f"{dev}, best of {a.reps} after 1; torch {torch.__version__}, transformers {hf.version}; "
          f"memory bandwidth (a copy) {bw / 1e9:.0f} GB/s")
    print(f"{'batch':>5s} {'side':12s} {'setting':16s} {'tok/s':>8s} {'vs transformers default':>24s} "
          f"{'vs same dtype':>14s} {'of ceiling':>11s}")

    def ceiling(bs, dtype):      # tok/s if a step took only the time to read the weights once
        return bs * bw / (n_params * torch.finfo(dtype).bits / 8)

    for bs in a.batches:
        ids = [tok.encode_prompt(p) for p in PROMPTS[:bs]]
        L = max(map(len, ids))
        x = torch.tensor([[tok.pad_id] * (L - len(i)) + i for i in ids])
        m = torch.tensor([[0] * (L - len(i)) + [1] * len(i) for i in ids])
        hf_rate = {}
        for name, ref in theirs.items():       # timed in its own process, around its generate() only
            def once(ref=ref):
                y, seconds = ref.generate(x, m, a.max_new_tokens, tok.pad_id)
                return y.numel(), seconds
            hf_rate[name] = best_rate(a, once)
            dt = auto if name == "default" else name
            label = f"default ({auto})" if name == "default" else name
            print(f"{bs:5d} {'transformers':12s} {label:16s} {hf_rate[name]:8.1f} "
                  f"{hf_rate[name] / hf_rate['default']:24.2f} {'':14s} "
                  f"{hf_rate[name] / ceiling(bs, getattr(torch, dt)):11.0%}")
        hf_rate[auto] = hf_rate["default"]
        for name in a.ours:
            wd, ad, compiled = settings(a.device, name)
            model = models[wd][0]

            def once():
                with torch.autocast(a.device, dtype=ad or torch.bfloat16, enabled=ad is not None):
                    t0 = time.perf_counter()
                    out = generate(model, ids, a.max_new_tokens, eos_ids=[], temperature=0,
                                   pad_id=tok.pad_id, compiled=compiled)
                    if a.device == "cuda":
                        torch.cuda.synchronize()
                    return sum(len(o) for o in out), time.perf_counter() - t0
            rate = best_rate(a, once)
            compute = "bfloat16" if torch.bfloat16 in (wd, ad) else "float32"
            same = f"{rate / hf_rate[compute]:14.2f}" if compute in hf_rate else f"{'-':>14s}"
            print(f"{bs:5d} {'nanoalign':12s} {name:16s} {rate:8.1f} {rate / hf_rate['default']:24.2f} "
                  f"{same} {rate / ceiling(bs, getattr(torch, compute)):11.0%}")


def products(a):
    """Print the time of one pass over the model's packed decode products at each batch size."""
    model, _ = load(a.init_from, torch.float32, "cpu")
    units = packing_units(model)                   # (owner, method, linears) per packed product
    n = sum(lin.weight.numel() for _, _, linears in units for lin in linears)

    def best_ms(fn):
        fn()
        return 1e3 * min(timed(fn) for _ in range(a.reps))

    print(f"the decode step's {len(units)} packed products of {a.init_from} ({n / 1e6:.0f}M weights), "
          f"cpu, {torch.get_num_threads()} threads, best of {a.reps}; torch {torch.__version__}")
    # the read floor: a float32 sum over as many bytes as the weights hold in each dtype (a sum over
    # bf16 values would time the CPU's conversions, not the memory: it ran at half the speed here)
    floor = {dt: best_ms(lambda x=torch.randn(n * dt.itemsize // 4): x.sum())
             for dt in (torch.bfloat16, torch.float32)}
    print("reading the weights' bytes (a float32 x.sum() over as many): " + ", ".join(
        f"{str(dt)[6:]} {ms:.1f} ms ({n * dt.itemsize / ms / 1e6:.1f} GB/s)" for dt, ms in floor.items()))
    print(f"{'batch':>5s} {'dtype':9s} {'ms':>7s} {'weights GB/s':>13s} {'GFLOP/s':>8s} {'read / products':>16s}")
    for bs in a.batches:
        for dt in (torch.bfloat16, torch.float32):
            # bf16 as sample.py decodes in it on a bf16 CPU: float32 weights under autocast
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dt == torch.bfloat16), \
                    cpu_packed_linears(model, bs):
                calls = [(getattr(owner, method), torch.randn(bs, 1, linears[0].in_features).to(dt))
                         for owner, method, linears in units]       # each product and a (B, 1, in) input
                ms = best_ms(lambda: [f(x) for f, x in calls])
            print(f"{bs:5d} {str(dt)[6:]:9s} {ms:7.2f} {n * dt.itemsize / ms / 1e6:13.1f} "
                  f"{2 * n * bs / ms / 1e6:8.1f} {floor[dt] / ms:16.0%}")


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def best_rate(a, once):
    """Tokens/s of `once()` -> (new tokens, seconds): an untimed pass, then the best of a.reps."""
    once()
    return max(n / s for n, s in (once() for _ in range(a.reps)))


if __name__ == "__main__":
    main()
