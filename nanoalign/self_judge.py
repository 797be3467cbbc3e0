"""
Self-Judge (Lee et al., self-judge-jsft.txt; METHODS.md "Self-Judge"): one model that is both the
policy and the judge.

  jsft                  Judge-augmented SFT (sec. 3.1): one SFT run on {(x, y_w)} plus judgment
                        instructions built from every pair in both position orders; target = the
                        template's answer ending in the better response's label (judge.judgment_rows).
                        A template with {principle} gives principle-aware judgments (one per
                        objective the row's labels decide); a rationale template adds the oracle's
                        short true rationale (built-in task only). --jsft_judge false = SFT on the
                        chosen responses alone, the control for "does JSFT improve judging?".
  self_judge            on-policy self-training (sec. 3.2). pi_theta and pi_ref start from the JSFT
                        model, pi_ref frozen. Each step, per prompt: two samples from pi_theta
                        (temperature 1.0, top-p 0.9), pi_ref judges them with position swap
                        (judge.swapped_probs; --judge policy: pi_theta judges), then
                            L_DPO = -logsigmoid(beta * [(pol_w - ref_w) - (pol_l - ref_l)])
                        with logp_sum log-probs and beta = 0.1 (nanoalign/dpo.py).
  self_judge_offpolicy  the off-policy baseline: each prompt's pair is sampled once from the initial
                        policy (pi_ref) and judged once by it, cached, then the same DPO.
  dpo                   the offline baseline on the dataset's own pairs (nanoalign/dpo.py).

Self-rejection at inference: `sample.py --best_of N` (judge.best_of, a tournament of N-1 judgments).
Metrics: judge agreement with the oracle on the sampled pairs (built-in task), DPO reward margin and
accuracy, mean sample length (tokens), samples/s, and where the time goes: t_sample, t_judge,
t_update (the policy and reference forwards; the loop's step_s includes the backward too).
"""
import time
import zlib

import torch

from nanoalign import task
from nanoalign.common import (Method, batch_logps, oracle_or_none, pair_batch, reference_logps,
                              sample_responses)
from nanoalign.data import DataError
from nanoalign.dpo import dpo_loss, log_ratio_diff
from nanoalign.judge import TEMPLATES, check_template, judgment_rows, swapped_probs
from nanoalign.sft import sft_loss

TEMPERATURE, TOP_P = 1.0, 0.9          # the paper's sampling for self-training


def template_of(cfg, tok):
    return check_template(tok, TEMPLATES[cfg.judge_template])


def jsft_rows(rows, cfg, split, tok):
    """Preference rows -> SFT rows: (x, y_w), plus judgments of each pair in both orders."""
    t = template_of(cfg, tok)
    out = [{"prompt": r["prompt"], "response": r["chosen"], "_where": r.get("_where", "row")}
           for r in rows]
    if not cfg.jsft_judge:
        return out
    for r in rows:
        if "{principle}" in t.user and not ("labels" in r and "objectives" in r):
            raise DataError(f"{r.get('_where', 'row')}: judge template '{t.name}' is principle-aware "
                            f"and needs 'labels' and 'objectives' fields on every row")
    if t.rationale and cfg.train_data != "builtin":
        raise DataError(f"judge template '{t.name}' trains on rationales, which only the built-in "
                        f"task's oracle writes; choose a template without rationale")
    return out + judgment_rows(rows, t, "{principle}" in t.user, task.rationale)


def _judge_and_pair(judge, tok, t, ptexts, prompts, s1, s2):
    """Judge sample pairs with position swap; (wins, losses, p, agreement with the oracle)."""
    y1, y2 = [tok.decode(x) for x in s1], [tok.decode(x) for x in s2]
    p = swapped_probs(judge, tok, t, list(zip(ptexts, y1, y2)))
    first = (p >= 0.5).tolist()
    wins = [a if f else b for a, b, f in zip(s1, s2, first)]
    losses = [b if f else a for a, b, f in zip(s1, s2, first)]
    agree = []
    for x, a, b, f in zip(ptexts, y1, y2, first):
        oa, ob = oracle_or_none(x, a), oracle_or_none(x, b)
        if oa is not None and oa != ob:
            agree.append(float((oa > ob) == f))
    return wins, losses, p, agree


def _dpo_step(model, ctx, cfg, prompts, wins, losses):
    b = pair_batch(prompts, wins, losses, ctx["tok"].pad_id, model.lm_head.weight.device)
    B = len(prompts)
    pol = batch_logps(model, b, "sum")                                   # (2B,)
    ref = reference_logps(ctx["ref"], b, "sum")                          # (2B,)
    h = log_ratio_diff(pol[:B], pol[B:], ref[:B], ref[B:]).detach()
    return dpo_loss(pol[:B], pol[B:], ref[:B], ref[B:], cfg.beta), {
        "margin": (cfg.beta * h).mean().item(), "reward_acc": (h > 0).float().mean().item()}


def _mets(agree, samples, n_drawn, t0, t1, t2, t3):
    """samples: the responses trained on; n_drawn: how many were sampled this step (the off-policy
    baseline draws only for prompts it has not cached)."""
    m = {"sample_len": sum(map(len, samples)) / len(samples),
         "t_sample": t1 - t0, "t_judge": t2 - t1, "t_update": t3 - t2}
    if n_drawn:
        m["samples_per_s"] = n_drawn / max(t1 - t0, 1e-9)
    if agree:
        m["judge_agree"] = sum(agree) / len(agree)
    return m


def self_judge_loss(model, batch, ctx, cfg):
    tok, t = ctx["tok"], TEMPLATES[cfg.judge_template]
    prompts, ptexts = batch["prompts"], [e["row"]["prompt"] for e in batch["examples"]]
    t0 = time.time()
    s = sample_responses(model, tok, prompts, 2, TEMPERATURE, TOP_P, cfg.gen_max_tokens)
    t1 = time.time()
    judge = model if cfg.judge == "policy" else ctx["ref"]
    wins, losses, p, agree = _judge_and_pair(judge, tok, t, ptexts, prompts,
                                             [x[0] for x in s], [x[1] for x in s])
    t2 = time.time()
    loss, m = _dpo_step(model, ctx, cfg, prompts, wins, losses)
    m.update(_mets(agree, [y for x in s for y in x], 2 * len(s), t0, t1, t2, time.time()))
    return loss.sum(), m


def offpolicy_loss(model, batch, ctx, cfg):
    """Each distinct prompt's pair is sampled from pi_ref with a generator seeded by (seed, prompt),
    so the cache is the same after a resume, whatever the batch it first appears in."""
    tok, t = ctx["tok"], TEMPLATES[cfg.judge_template]
    cache = ctx.setdefault("offpolicy", {})
    prompts, ptexts = batch["prompts"], [e["row"]["prompt"] for e in batch["examples"]]
    t0 = time.time()
    new = [i for i, p in enumerate(prompts) if tuple(p) not in cache]
    s = []
    for i in new:
        g = torch.Generator(model.lm_head.weight.device)
        g.manual_seed(zlib.crc32(repr((cfg.seed, prompts[i])).encode()))
        s += sample_responses(ctx["ref"], tok, [prompts[i]], 2, TEMPERATURE, TOP_P, cfg.gen_max_tokens, g)
    t1 = time.time()
    agree = []
    if new:
        w, lo, _, agree = _judge_and_pair(ctx["ref"], tok, t, [ptexts[i] for i in new],
                                          [prompts[i] for i in new], [x[0] for x in s], [x[1] for x in s])
        cache.update({tuple(prompts[i]): (a, b) for i, a, b in zip(new, w, lo)})
    t2 = time.time()
    wins, losses = zip(*[cache[tuple(p)] for p in prompts])
    loss, m = _dpo_step(model, ctx, cfg, prompts, list(wins), list(losses))
    m.update(_mets(agree, list(wins) + list(losses), 2 * len(new), t0, t1, t2, time.time()))
    m["cached_prompts"] = float(len(cache))
    return loss.sum(), m


def _prompt_rows(rows, cfg, split, tok):
    template_of(cfg, tok)   # fail at start-up, not mid-run, on a template this tokenizer can't read
    return rows


METHODS = [
    Method("jsft", "sft", "n_tokens", sft_loss, "Self-Judge JSFT: SFT on chosen responses + judgment "
           "instructions in both orders (--judge_template, --jsft_judge)", source="pref",
           prepare=jsft_rows, defaults={"max_length": 384}),
    Method("self_judge", "prompt", "n_examples", self_judge_loss, "Self-Judge: on-policy DPO, two "
           "samples per prompt judged by the frozen reference (--judge policy: by the policy)",
           needs_ref=True, source="prompt", prepare=_prompt_rows),
    Method("self_judge_offpolicy", "prompt", "n_examples", offpolicy_loss, "Self-Judge's off-policy "
           "baseline: pairs sampled and judged once by the initial policy, then DPO", needs_ref=True,
           source="prompt", prepare=_prompt_rows),
]
