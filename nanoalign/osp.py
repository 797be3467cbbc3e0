"""
Online Self-Preferring ("Online Self-Preferring Language Models", arXiv:2405.14103; Algorithm 1,
eq. 7-9; docs/methods.md#osp).

  pref_aug  optional preference augmentation (Alg. 1 line 3): SFT on LLM-as-a-judge instructions
            built from preference pairs in both position orders (judge.judgment_rows, the same
            machinery as JSFT) - judgments only, no responses.
  osp       from that (or any SFT) checkpoint, pi_SFT frozen as judge and reference (--judge_from:
            another checkpoint judges). Each step, per prompt x, under no_grad:
              1. K samples y_1..y_K from pi_theta (temperature 0.7, top-p 0.9; --osp_k, K = 7)
              2. ranked pairing: s(y) = p(y > blank | x) from the pi_SFT judge, the blank being an
                 empty response; sort; pair the i-th best with the i-th worst -> K//2 pairs (y_h,
                 y_l); an odd K leaves the median out (docs/methods.md#sampling-and-ranked-pairing)
              3. target strength p = p(y_h > y_l | x): the pi_SFT judge, softmax over the two label
                 logits (sec. 3.2, 'pair'; --likelihood '' takes the rule the judge's checkpoint
                 records, so from a JSFT start Self-Judge's 'vocab'), averaged over both orders (appendix
                 B.2 swaps them); under a principle template, the mean over the principles of each
                 principle's p (judge.principle_mean: monotone in every principle's p, and soft;
                 docs/methods.md#target-strength)
            then, with h = (logp_sum_theta(y_h) - logp_sum_SFT(y_h)) - (logp_sum_theta(y_l) - logp_sum_SFT(y_l))
            (logp_sum: docs/methods.md#sequence-log-probabilities) and p_hat = sigmoid(beta * h) (eq. 7,
            beta on the whole difference as in DPO; eq. 7 as printed puts it on the first log-ratio
            only, and eq. 9 leaves it out: docs/methods.md#spce-loss says why we read it so):
              L_SPCE = -[p * log(p_hat) + (1 - p) * log(1 - p_hat)]                   (eq. 8; printed
                                      without the minus, the log-likelihood it maximizes)
            For p in {0, 1} this is exactly DPO; d L_SPCE / d h = beta * (p_hat - p) (eq. 9). All three:
            docs/methods.md#spce-loss.

Ablations (the paper's): --osp_loss dpo (hard labels: the pair oriented by p >= 1/2) or ipo
((h - 1/(2 beta))^2, same orientation); --pairing random (K//2 random disjoint pairs); --pairing raft
(SFT on the sample with the best s(y), RAFT); docs/methods.md#ablations. Each prompt's K//2 pair
losses are averaged, so the loss is a mean over prompts whatever K is.

beta: 0.1 by default, the paper's value for Mistral-7B with LoRA; its full fine-tunes used 0.001
(dialogue) and 0.02 (summaries). 0.1 suits small models and few steps, where a tiny beta barely moves
the policy; set --beta to the paper's value for a full fine-tune of a real model.

osp_rollout is the round sample -> judge -> pairs (the loop calls it with no gradients; the plumbing
is nanoalign/onpolicy.py's, shared with Self-Judge); osp_loss is the update on its pairs.
Metrics: the loss (SPCE), target strength p and predicted strength p_hat (mean, std), DPO's margin
and reward_acc, judge agreement with the oracle on the pairs (built-in task), mean sample length,
and the cost split t_sample / t_judge (the rest of the loop's step_s is the update).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nanoalign import onpolicy
from nanoalign.common import Method, batch_logps, option, register, with_defaults
from nanoalign.compute import packed_batches
from nanoalign.dpo import dpo_loss, ipo_loss, log_ratio_diff, pair_losses, pair_metrics
from nanoalign.judge import TEMPLATES
from nanoalign.sft import METRICS as SFT_METRICS, sft_loss

TEMPERATURE, TOP_P = 0.7, 0.9          # the paper's sampling (Table 4)
LIKELIHOOD = "pair"                    # the paper's rule (sec. 3.2), where the judge records none


@dataclass
class OSPOptions(onpolicy.OnPolicyOptions):
    beta: float = option(0.1, "SPCE / DPO / IPO beta. 0.1 is the OSP paper's value for Mistral-7B "
                         "with LoRA and suits a small model over few steps; its full fine-tunes used "
                         "0.001 (dialogue) and 0.02 (summaries)", above=0.0)
    osp_k: int = option(7, "samples per prompt (K // 2 pairs; paper 7)", minimum=2)
    osp_loss: str = option("spce", "'spce' (soft targets, eq. 8), or the ablations 'dpo' / 'ipo' (hard "
                           "labels from the same judge)", choices=("spce", "dpo", "ipo"))
    pairing: str = option("ranked", "'ranked' (best with worst), or the ablations 'random' and 'raft' "
                          "(SFT on the best sample: --osp_loss and --beta unused)",
                          choices=("ranked", "random", "raft"))
    likelihood: str = onpolicy.judge_likelihood(LIKELIHOOD, "OSP's")


def spce_loss(pol_h, pol_l, ref_h, ref_l, p, beta):
    """Per-pair soft-preference cross-entropy (eq. 8), with p_hat = sigmoid(beta * h) (eq. 7)."""
    z = beta * log_ratio_diff(pol_h, pol_l, ref_h, ref_l)
    # log(p_hat) = logsigmoid(z), log(1 - p_hat) = logsigmoid(-z): no log(0) where p_hat rounds to 0 or 1
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


def osp_rollout(model, batch, run, cfg):
    """Alg. 1 lines 5-8, one round (the loop calls it with no gradients): K samples per prompt, the
    pi_SFT judge's scores s(y), K//2 pairs and their target strengths p. Returns the pair batch
    (chosen = y_h rows first, its "p" the soft targets) or, for RAFT, each prompt's best sample."""
    tok, t, K = run.tok, TEMPLATES[cfg.judge_template], cfg.osp_k
    judge, jtok = onpolicy.judge_of(run, run.ref)
    how = dict(principles=run.principles, likelihood=cfg.likelihood, combine="mean")
    prompts, ptexts = batch["prompts"], [e["row"]["prompt"] for e in batch["examples"]]
    B, clock, device = len(prompts), onpolicy.Clock(), model.lm_head.weight.device
    packed = packed_batches(cfg, model)         # --packed: the update's batch padding-free
    n_new = onpolicy.new_tokens(cfg, model)      # --gen_max_tokens, or its auto by the model's size
    samples = onpolicy.sample(model, tok, prompts, K, TEMPERATURE, TOP_P, n_new)
    texts = [[tok.decode(s) for s in row] for row in samples]
    flat_samples = [y for row in samples for y in row]
    clock.lap("t_sample")
    if cfg.pairing in ("ranked", "raft"):       # s(y) = p(y > blank | x), all B*K in one pass: (B, K)
        s = onpolicy.judge_probs(judge, jtok, t, [x for x in ptexts for _ in range(K)],
                                 [y for row in texts for y in row], [""] * (B * K), **how).view(B, K)
    if cfg.pairing == "raft":                   # RAFT: SFT on each prompt's best sample
        best = s.argmax(1).tolist()
        b = onpolicy.response_batch(prompts, [samples[i][best[i]] for i in range(B)], tok.pad_id, device,
                                    packed)
        clock.lap("t_judge")
        return b, {"score_best": s.max(1).values.mean().item(),
                   **onpolicy.cost(flat_samples, clock, B * K)}
    pairs = [ranked_pairs(s[i].tolist()) if cfg.pairing == "ranked" else random_pairs(K)
             for i in range(B)]
    flat = [(i, hi, lo) for i in range(B) for hi, lo in pairs[i]]              # B * K//2 pairs
    a, b = [texts[i][hi] for i, hi, _ in flat], [texts[i][lo] for i, _, lo in flat]
    p = onpolicy.judge_probs(judge, jtok, t, [ptexts[i] for i, _, _ in flat], a, b, **how)  # p(y_h > y_l)
    agree = onpolicy.agreement(run.task, [ptexts[i] for i, _, _ in flat], a, b, p.tolist())
    highs, lows = [samples[i][hi] for i, hi, _ in flat], [samples[i][lo] for i, _, lo in flat]
    if cfg.osp_loss != "spce":                  # hard labels: orient each pair by the judge
        highs, lows = onpolicy.orient(highs, lows, p)
        p = torch.maximum(p, 1 - p)             # p(winner > loser), as the pairs now stand
    clock.lap("t_judge")
    pb = onpolicy.pair_batch([prompts[i] for i, _, _ in flat], highs, lows, tok.pad_id, device, packed)
    pb["p"] = p.to(device)                      # (B * K//2,) soft targets, in pair order
    pb["n_examples"] = B                        # the loss is a mean over prompts, whatever K is
    return pb, {**agree, **onpolicy.cost(flat_samples, clock, B * K)}


def osp_loss(model, batch, run, cfg):
    """Eq. 8 on a rollout's pairs against the frozen pi_SFT (or the DPO / IPO ablation), each
    prompt's K//2 pair losses averaged; RAFT: the NLL per token of each prompt's best sample."""
    if cfg.pairing == "raft":
        loss = -batch_logps(model, batch, "mean")
        return loss.sum(), {"raft_nll": loss.mean().item()}
    p = batch["p"].to(model.lm_head.weight.dtype)
    # pair_losses calls fn(pol_h, pol_l, ref_h, ref_l, beta); SPCE also takes the targets p
    fn = {"spce": lambda *x: spce_loss(*x[:4], p, x[4]), "dpo": dpo_loss, "ipo": ipo_loss}[cfg.osp_loss]
    # the batch holds B * K//2 pairs, chosen rows first: pair_losses splits its rows at the number of
    # pairs, where batch["n_examples"] is the B prompts that the loop divides the loss by. (B * K//2,)
    per_pair, h = pair_losses(fn, model, {**batch, "n_examples": len(p)}, run.ref, cfg.beta)
    loss = per_pair.view(batch["n_examples"], cfg.osp_k // 2).mean(1)   # (B, K//2) -> (B,) prompt means
    return loss.sum(), {**pair_metrics(h, cfg.beta), **_stats("p", p),
                        **_stats("p_hat", torch.sigmoid(cfg.beta * h))}


def pref_aug_rows(rows, cfg, split, run):
    """Alg. 1 line 3: LLM-as-a-judge instructions from preference pairs, both orders, nothing else."""
    return onpolicy.judgment_data(rows, onpolicy.template_of(cfg, run.tok), run, split)


METRICS = {**onpolicy.METRICS, "p_mean": "target strength p(y_h > y_l) from the judge",
           "p_std": "its standard deviation within a micro-batch (the step's micro-batches' mean)",
           "p_hat_mean": "predicted strength sigmoid(beta * h)",
           "p_hat_std": "its standard deviation within a micro-batch (as p_std)", "margin": "beta * h",
           "reward_acc": "fraction with h > 0",
           "raft_nll": "RAFT: NLL per token of the best sample", "score_best": "RAFT: its judge score"}
register(
    Method(name="pref_aug", reads="pref", eats="sft", unit="n_tokens", loss=sft_loss,
           help="OSP preference augmentation: SFT on judge instructions from preference pairs (both "
                "orders)", options=with_defaults(onpolicy.JudgeTemplateOptions, "PrefAugOptions",
                                                 likelihood=LIKELIHOOD),
           prepare=pref_aug_rows, check_row=onpolicy.label_check, metrics=SFT_METRICS,
           trains_judge=lambda cfg: True),
    Method(name="osp", reads="prompt", eats="prompt", unit="n_examples", rollout=osp_rollout,
           loss=osp_loss, help="OSP: K samples per prompt, ranked pairs, soft targets from the frozen "
           "SFT judge, SPCE (--osp_loss, --pairing, --osp_k)", options=OSPOptions, needs_ref=True,
           setup=onpolicy.setup, start_defaults=onpolicy.judging_defaults(LIKELIHOOD),
           metrics=METRICS,
           # --lr 0 on a pretrained model: RAFT is SFT (SFTConfig's rate); the pair losses are DPO's
           # family on the policy's own judged samples (OnlineDPOConfig's)
           trl_rate=lambda cfg: "sft" if cfg.pairing == "raft" else "online"),
)
