"""
Greedy decoding speed on the CPU: nanoalign's generate() beside transformers' generate(), same
weights, same prompts, same run. A script, not a test.

    python -m bench.decode_speed --init_from checkpoints/smollm2-135m

Both decode exactly max_new_tokens (EOS ignored) so they do the same work; tokens/s counts the new
tokens of all rows. The ratio is ours / theirs. transformers runs in its own interpreter
(tests/hf_reference.py: the top-level kernels/ would shadow Hugging Face's `kernels` here) and times
its own generate(); the two never run at the same time.
"""
import argparse
import sys
import time

import torch

from model.checkpoint import load
from model.generate import generate
from tests.hf_reference import Missing, transformers_process

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.",
           "Explain photosynthesis in one sentence.", "List three prime numbers.",
           "What is 12 times 7?", "Name a famous painter.", "Why is the sky blue?",
           "Give me a synonym for happy."]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init_from", default="checkpoints/smollm2-135m", help="checkpoint directory")
    ap.add_argument("--max_new_tokens", type=int, default=128, help="new tokens per row")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        with transformers_process(torch.get_num_threads()) as hf:
            run(a, hf)
    except Missing as e:
        sys.exit(f"error: {e}; this benchmark compares with it (pip install transformers)")


def run(a, hf):
    model, tok = load(a.init_from)
    ref = hf.model(a.init_from)  # its generate() decodes exactly max_new_tokens, as ours does here
    print(f"greedy decoding, {a.max_new_tokens} new tokens, float32, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, transformers {hf.version}")
    print(f"{'batch':>5s} {'nanoalign tok/s':>16s} {'transformers tok/s':>19s} {'ratio':>6s}")
    for bs in (1, 8):
        ids = [tok.encode_prompt(p) for p in PROMPTS[:bs]]
        res = {}
        for name in ("nanoalign", "transformers"):
            for rep in range(2):  # the first pass warms up allocators and caches
                if name == "nanoalign":
                    t0 = time.perf_counter()
                    out = generate(model, ids, a.max_new_tokens, eos_ids=[], temperature=0,
                                   pad_id=tok.pad_id)
                    n, seconds = sum(len(o) for o in out), time.perf_counter() - t0
                else:  # timed in its own process, around its generate() only
                    L = max(map(len, ids))
                    x = torch.tensor([[tok.pad_id] * (L - len(i)) + i for i in ids])
                    m = torch.tensor([[0] * (L - len(i)) + [1] * len(i) for i in ids])
                    y, seconds = ref.generate(x, m, a.max_new_tokens, tok.pad_id)
                    n = y.numel()
                res[name] = n / seconds
        print(f"{bs:5d} {res['nanoalign']:16.1f} {res['transformers']:19.1f} "
              f"{res['nanoalign'] / res['transformers']:6.2f}")


if __name__ == "__main__":
    main()
