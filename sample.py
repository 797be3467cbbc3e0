"""
Sample from a checkpoint directory (Hugging Face layout: what train.py writes, or any Llama/Mistral).

    python sample.py --init_from checkpoints/smollm2-135m --temperature 0 \\
        --prompt "What is the capital of France?"
    python sample.py --init_from out/orpo/ckpt --prompts_file prompts.txt --num_samples 3

Prompts are rendered through the checkpoint's chat template unless --raw. All prompts (x
num_samples) go through one batched, left-padded generation with the KV cache.
"""
import argparse
import sys
import time

import torch

from model.checkpoint import CheckpointError, load
from model.generate import generate


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init_from", required=True,
                    help="checkpoint directory (config.json, model.safetensors, tokenizer.json)")
    ap.add_argument("--prompt", action="append", default=[],
                    help="a prompt; repeat the flag for several")
    ap.add_argument("--prompts_file", default=None, help="a text file with one prompt per line")
    ap.add_argument("--raw", action="store_true", help="feed prompts as-is, no chat template")
    ap.add_argument("--system", default=None, help="system message (default: the checkpoint's)")
    ap.add_argument("--temperature", type=float, default=0.8, help="0 means greedy decoding")
    ap.add_argument("--top_p", type=float, default=None, help="nucleus sampling threshold in (0, 1]")
    ap.add_argument("--top_k", type=int, default=None, help="keep only the k most likely tokens")
    ap.add_argument("--max_new_tokens", type=int, default=128, help="tokens to generate per sample")
    ap.add_argument("--num_samples", type=int, default=1, help="completions per prompt")
    ap.add_argument("--seed", type=int, default=1337, help="random seed for sampling")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="cpu or cuda")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                    help="weights dtype")
    a = ap.parse_args(argv)
    if a.temperature < 0:
        ap.error("--temperature must be >= 0")
    if a.top_p is not None and not 0 < a.top_p <= 1:
        ap.error("--top_p must be in (0, 1]")
    if a.num_samples < 1 or a.max_new_tokens < 1:
        ap.error("--num_samples and --max_new_tokens must be >= 1")
    return a


def main(argv=None):
    a = parse_args(argv)
    prompts = list(a.prompt)
    if a.prompts_file:
        with open(a.prompts_file) as f:
            prompts += [line.rstrip("\n") for line in f if line.strip()]
    if not prompts:
        sys.exit("give at least one --prompt or a --prompts_file")
    try:
        model, tok = load(a.init_from, getattr(torch, a.dtype), a.device)
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    g = torch.Generator(device=a.device).manual_seed(a.seed)
    ids = [tok.encode(p) if a.raw else tok.encode_prompt(p, a.system) for p in prompts]
    batch = [i for i in ids for _ in range(a.num_samples)]
    t0 = time.time()
    try:
        outs = generate(model, batch, a.max_new_tokens, model.cfg.eos_ids + [tok.eos_id],
                        a.temperature, a.top_k, a.top_p, g, tok.pad_id or 0)
    except ValueError as e:
        sys.exit(f"error: {e}")
    dt = time.time() - t0
    for i, out in enumerate(outs):
        print(f"--- prompt {i // a.num_samples} sample {i % a.num_samples}: "
              f"{prompts[i // a.num_samples]!r}")
        print(tok.decode(out))
    n = sum(len(o) for o in outs)
    print(f"--- {n} tokens in {dt:.2f}s ({n / dt:.1f} tok/s)", file=sys.stderr)
    return outs


if __name__ == "__main__":
    main()
