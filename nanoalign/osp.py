"""
Online Self-Preferring (OSP; online-self-preferring-osp.txt, Algorithm 1, eq. 5-7; METHODS.md "OSP").

  pref_aug  optional preference augmentation (Alg. 1 line 3): SFT on LLM-as-a-judge instructions
            built from preference pairs in both position orders (judge.judgment_rows, the same
            machinery as JSFT) - judgments only, no responses.
  osp       from that (or any SFT) checkpoint, pi_SFT frozen as judge and reference. Each step, per
            prompt x, under no_grad:
              1. K samples y_1..y_K from pi_theta (temperature 0.7, top-p 0.9; --osp_k, K = 7)
              2. ranked pairing: s(y) = p(y > blank | x) from the pi_SFT judge; sort; pair the i-th
                 best with the i-th worst -> K//2 pairs (y_h, y_l); an odd K leaves the median out
              3. target strength p = p(y_h > y_l | x): the pi_SFT judge, softmax over the two label
                 tokens, averaged over both position orders (judge.swapped_probs)
            then, with h = (logp_sum_theta(y_h) - logp_sum_SFT(y_h)) - (logp_sum_theta(y_l) - logp_sum_SFT(y_l))
            and p_hat = sigmoid(beta * h):
              L_SPCE = -[p * log(p_hat) + (1 - p) * log(1 - p_hat)]                   (eq. 7)
            For p in {0, 1} this is exactly DPO; d L_SPCE / d h = beta * (p_hat - p).

Ablations (the paper's): --osp_loss dpo (hard labels: the pair oriented by p >= 1/2) or ipo
((h - 1/(2 beta))^2, same orientation); --pairing random (K//2 random disjoint pairs); --pairing raft
(SFT on the sample with the best s(y), RAFT). Each prompt's K//2 pair losses are averaged, so the
loss is a mean over prompts whatever K is.

Metrics: target strength p and predicted strength p_hat (mean, std), SPCE, judge agreement with the
oracle on the pairs (built-in task), mean sample length, and the cost split t_sample / t_judge /
t_update (the policy and reference forwards; the loop's step_s adds the backward).
"""
import time

import torch
import torch.nn.functional as F

from nanoalign.common import (Method, batch_logps, oracle_or_none, pair_batch, reference_logps,
                              response_batch, sample_responses)
from nanoalign.dpo import dpo_loss, ipo_loss, log_ratio_diff
from nanoalign.judge import TEMPLATES, judgment_rows, swapped_probs
from nanoalign.self_judge import template_of
from nanoalign.sft import sft_loss

TEMPERATURE, TOP_P = 0.7, 0.9          # the paper's sampling


def spce_loss(pol_h, pol_l, ref_h, ref_l, p, beta):
    """Per-pair soft-preference cross-entropy (eq. 7), with p_hat = sigmoid(beta * h)."""
    z = beta * log_ratio_diff(pol_h, pol_l, ref_h, ref_l)
    return -(p * F.logsigmoid(z) + (1 - p) * F.logsigmoid(-z))


def ranked_pairs(scores):
    """K scores -> K//2 disjoint pairs (i-th best, i-th worst), best pair first."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    K = len(order)
    return [(order[i], order[K - 1 - i]) for i in range(K // 2)]


def random_pairs(K, generator=None):
    perm = torch.randperm(K, generator=generator).tolist()
    return [(perm[2 * i], perm[2 * i + 1]) for i in range(K // 2)]


def _stats(prefix, t):
    return {f"{prefix}_mean": t.mean().item(), f"{prefix}_std": t.std().item() if t.numel() > 1 else 0.0}


def osp_loss(model, batch, ctx, cfg):
    tok, t, ref, K = ctx["tok"], TEMPLATES[cfg.judge_template], ctx["ref"], cfg.osp_k
    prompts, ptexts = batch["prompts"], [e["row"]["prompt"] for e in batch["examples"]]
    B, t0 = len(prompts), time.time()
    samples = sample_responses(model, tok, prompts, K, TEMPERATURE, TOP_P, cfg.gen_max_tokens)
    texts = [[tok.decode(s) for s in row] for row in samples]
    t1 = time.time()
    if cfg.pairing in ("ranked", "raft"):       # s(y) = p(y > blank | x), all B*K in one pass
        s = swapped_probs(ref, tok, t, [(x, y, "") for x, row in zip(ptexts, texts) for y in row]).view(B, K)
    if cfg.pairing == "raft":                   # RAFT: SFT on each prompt's best sample
        best = s.argmax(1).tolist()
        b = response_batch(prompts, [samples[i][best[i]] for i in range(B)], tok.pad_id,
                           model.lm_head.weight.device)
        t2 = time.time()
        loss = -batch_logps(model, b, "mean")
        m = {"raft_nll": loss.mean().item(), "score_best": s.max(1).values.mean().item()}
        m.update(_cost(samples, t0, t1, t2))
        return loss.sum(), m
    pairs = [ranked_pairs(s[i].tolist()) if cfg.pairing == "ranked" else random_pairs(K)
             for i in range(B)]
    flat = [(i, hi, lo) for i in range(B) for hi, lo in pairs[i]]              # B * K//2 pairs
    p = swapped_probs(ref, tok, t, [(ptexts[i], texts[i][hi], texts[i][lo]) for i, hi, lo in flat])
    t2 = time.time()
    if cfg.osp_loss != "spce":                  # hard labels: orient each pair by the judge
        flat = [(i, hi, lo) if q >= 0.5 else (i, lo, hi) for (i, hi, lo), q in zip(flat, p.tolist())]
    b = pair_batch([prompts[i] for i, _, _ in flat], [samples[i][hi] for i, hi, _ in flat],
                   [samples[i][lo] for i, _, lo in flat], tok.pad_id, model.lm_head.weight.device)
    n = len(flat)
    pol, rl = batch_logps(model, b, "sum"), reference_logps(ref, b, "sum")     # (2n,)
    args = (pol[:n], pol[n:], rl[:n], rl[n:])
    p = p.to(pol.dtype)
    per_pair = {"spce": lambda: spce_loss(*args, p, cfg.beta), "dpo": lambda: dpo_loss(*args, cfg.beta),
                "ipo": lambda: ipo_loss(*args, cfg.beta)}[cfg.osp_loss]()
    loss = per_pair.view(B, K // 2).mean(1)                                   # mean over a prompt's pairs
    with torch.no_grad():
        p_hat = torch.sigmoid(cfg.beta * log_ratio_diff(*args))
        m = {**_stats("p", p), **_stats("p_hat", p_hat),
             "spce": spce_loss(*args, p, cfg.beta).mean().item()}
    agree = []
    for (i, hi, lo), q in zip(flat, p.tolist()):
        oh, ol = oracle_or_none(ptexts[i], texts[i][hi]), oracle_or_none(ptexts[i], texts[i][lo])
        if oh is not None and oh != ol:
            agree.append(float((oh > ol) == (q >= 0.5)))
    if agree:
        m["judge_agree"] = sum(agree) / len(agree)
    m.update(_cost(samples, t0, t1, t2))
    return loss.sum(), m


def _cost(samples, t0, t1, t2):
    flat = [y for row in samples for y in row]
    return {"sample_len": sum(map(len, flat)) / len(flat), "t_sample": t1 - t0, "t_judge": t2 - t1,
            "t_update": time.time() - t2}


def pref_aug_rows(rows, cfg, split, tok):
    """Alg. 1 line 3: LLM-as-a-judge instructions from preference pairs, both orders, nothing else."""
    t = template_of(cfg, tok)
    return judgment_rows(rows, t, "{principle}" in t.user)


def _prompt_rows(rows, cfg, split, tok):
    template_of(cfg, tok)   # start-up check of the judge template
    return rows


METHODS = [
    Method("pref_aug", "sft", "n_tokens", sft_loss,
           "OSP preference augmentation: SFT on judge instructions from preference pairs (both "
           "orders)", source="pref", prepare=pref_aug_rows, defaults={"max_length": 384}),
    Method("osp", "prompt", "n_examples", osp_loss, "OSP: K samples per prompt, ranked pairs, soft "
           "targets from the frozen SFT judge, SPCE (--osp_loss, --pairing, --osp_k)",
           needs_ref=True, source="prompt", prepare=_prompt_rows),
]
