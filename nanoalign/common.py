"""
What every method shares, written once: the Method record, sequence log-probs of a padded batch,
and the frozen reference model.

A method is a `Method`: which data it eats, what its loss is a sum over (tokens or examples), and a
`loss(model, batch, ctx, cfg)` returning (loss summed over the micro-batch, metrics). The training loop
divides by the number of units in the whole effective batch, so gradient accumulation over N
micro-batches equals one step on their concatenation (data.py, train.py).
"""
import copy
from dataclasses import dataclass
from typing import Callable

import torch

from kernels import sequence_logprob
from nanoalign.data import make_batch


@dataclass
class Method:
    name: str
    data: str                 # the batch kind the loss eats: "sft", "pref", "mo" or "prompt"
    unit: str                 # "n_tokens" or "n_examples": the loss is a sum over these
    loss: Callable            # (model, batch, ctx, cfg) -> (loss_sum, {metric: float})
    help: str
    needs_ref: bool = False   # a frozen copy of the initial model goes in ctx["ref"]
    source: str = None        # kind of JSONL row read ("sft" / "pref" / "prompt"); default = data
    prepare: Callable = None  # (rows, cfg, split, tok) -> rows of kind `data` (e.g. add SJ triples)
    defaults: dict = None     # config values this method changes unless the user sets them


def batch_logps(model, batch, reduction="sum", mask=None):
    """Per-row log p(response | prompt) of a right-padded batch, via the fused kernel.
    reduction: 'sum' (DPO family) or 'mean' (ORPO family), see kernels/seq_logprob.py."""
    hidden = model(batch["ids"], batch["attn"])                         # (B, T, dim)
    return sequence_logprob(hidden, model.lm_head.weight, batch["targets"],
                            batch["mask"] if mask is None else mask, reduction)


def frozen_copy(model):
    """The reference policy: a copy that never trains (eval mode, no grads)."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


@torch.no_grad()
def reference_logps(ref, batch, reduction="sum"):
    return batch_logps(ref, batch, reduction)


# -- on-policy pieces (Self-Judge, OSP): sample, then turn chosen/rejected ids into a batch ---------
def sample_responses(model, tok, prompts, n, temperature, top_p, max_new_tokens, generator=None,
                     top_k=None):
    """n samples per prompt (lists of token ids), one batched KV-cached generate call; returns
    [[ids of sample 0, ..., sample n-1] per prompt]. Samples end at EOS (kept) or max_new_tokens.
    Uses torch's global RNG unless a generator is given, so a resumed run samples the same."""
    from model.generate import generate
    flat = generate(model, [p for p in prompts for _ in range(n)], max_new_tokens,
                    model.cfg.eos_ids + [tok.eos_id], temperature, top_k, top_p, generator,
                    tok.pad_id or 0)
    return [[s if s else [tok.eos_id] for s in flat[i * n:(i + 1) * n]] for i in range(len(prompts))]


def pair_batch(prompts, wins, losses, pad_id, device):
    """A preference batch (chosen rows first) from prompt ids and response ids, no re-tokenizing."""
    ex = [{"chosen": p + w, "n_prompt_chosen": len(p), "rejected": p + l, "n_prompt_rejected": len(p)}
          for p, w, l in zip(prompts, wins, losses)]
    return make_batch(ex, "pref", pad_id, device)


def response_batch(prompts, responses, pad_id, device):
    """An SFT batch from prompt ids and response ids."""
    return make_batch([{"ids": p + r, "n_prompt": len(p)} for p, r in zip(prompts, responses)],
                      "sft", pad_id, device)


def oracle_or_none(prompt, response):
    """The built-in task's oracle 'overall' score, or None for prompts that are not the task's."""
    from nanoalign import task
    try:
        return task.oracle_scores(prompt, response)["overall"]
    except ValueError:
        return None
