"""
SFT: the negative log-likelihood of the response tokens, prompt masked.

    loss = -(1 / n_tokens) * sum_{b, t} mask[b, t] * lp[b, t]

n_tokens counts the response tokens of the whole effective batch (the loop divides), so a long
response weighs more than a short one, as in every SFT trainer. Used for the warm-up of the built-in
task and, unchanged, by the SFT-style stages of the later methods.
"""
from nanoalign.common import Method, batch_logps, register


def sft_loss(model, batch, run, cfg):
    lp = batch_logps(model, batch, "sum")                   # (B,) summed response log-probs
    nll = -lp.sum()
    return nll, {"nll_per_token": nll.item() / max(batch["n_tokens"], 1)}


METRICS = {"nll_per_token": "negative log-likelihood per response token"}

register(Method(name="sft", reads="sft", eats="sft", unit="n_tokens", loss=sft_loss,
                help="supervised fine-tuning on {prompt, response} rows (prompt masked)",
                metrics=METRICS))
