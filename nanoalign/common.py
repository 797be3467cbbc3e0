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


@dataclass
class Method:
    name: str
    data: str                 # the batch kind the loss eats: "sft", "pref", "mo" or "prompt"
    unit: str                 # "n_tokens" or "n_examples": the loss is a sum over these
    loss: Callable            # (model, batch, ctx, cfg) -> (loss_sum, {metric: float})
    help: str
    needs_ref: bool = False   # a frozen copy of the initial model goes in ctx["ref"]
    source: str = None        # kind of JSONL row read ("sft" / "pref" / "prompt"); default = data
    prepare: Callable = None  # (rows, cfg, split) -> rows of kind `data` (e.g. add SJ triples)
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
