"""
Self-Judge ("Aligning Large Language Models by On-Policy Self-Judgment", arXiv:2402.11253;
docs/methods.md#self-judge): one model that is both the policy and the judge.

  jsft                  Judge-augmented SFT (sec. 3.1): one SFT run on {(x, y_w)} plus judgment
                        instructions built from every pair in both position orders; target = the
                        template's answer ending in the better response's label (judge.judgment_rows).
                        A template with {principle} gives principle-aware judgments (one per
                        objective the row's labels decide); a rationale template adds the oracle's
                        short true rationale (built-in task only). --jsft_judge false = SFT on the
                        chosen responses alone, the control for "does JSFT improve judging?".
  self_judge            on-policy self-training (sec. 3.2). pi_theta and pi_ref start from the JSFT
                        model (--init_from: a jsft run's checkpoint; a start that never trained to
                        judge, recording no judge template, judges zero-shot, and the run says so),
                        pi_ref frozen. Each step, per prompt: two samples from pi_theta
                        (temperature 1.0, top-p 0.9), pi_ref judges them with position swap by the
                        paper's rule (sec. 3.1, --likelihood vocab): each sample's judge-token
                        likelihood over the whole vocabulary, averaged over both orders, the larger
                        wins; under a principle template, win rate over the principles
                        (judge.judge_pairs). --judge policy: pi_theta judges (the paper's sec. 7
                        option); --judge_from DIR: another checkpoint judges, with its own
                        tokenizer (an option of nanoalign's, not one of the paper's settings). Then
                            L_DPO = -logsigmoid(beta * [(pol_w - ref_w) - (pol_l - ref_l)])
                        with logp_sum log-probs and beta = 0.1 (nanoalign/dpo.py).
  self_judge_offpolicy  the off-policy baseline: each prompt's pair is sampled once from the initial
                        policy (pi_ref) and judged once by it (or by a --judge_from checkpoint),
                        cached, then the same DPO.
  dpo                   the offline baseline on the dataset's own pairs (nanoalign/dpo.py).

Self-rejection at inference: `sample.py --best_of N` (judge.best_of, a tournament of N-1 judgments),
under the principles a run judged under (kept in its checkpoint, principles.json).
The round sample -> judge -> pairs is each method's `rollout` (the loop calls it with no gradients),
built from nanoalign/onpolicy.py's plumbing, shared with OSP; the update is DPO on its pairs.
Metrics: judge agreement with the oracle on the sampled pairs (built-in task), DPO reward margin and
accuracy, mean sample length (tokens), samples/s, and where the time goes: t_sample, t_judge (the
rest of the loop's step_s is the update).
"""
import zlib
from dataclasses import dataclass

import torch

from nanoalign import onpolicy
from nanoalign.common import Method, option, register
from nanoalign.compute import packed_batches
from nanoalign.dpo import METRICS as DPO_METRICS, dpo_loss, pairs_loss
from nanoalign.judge import TEMPLATES
from nanoalign.sft import METRICS as SFT_METRICS, sft_loss

TEMPERATURE, TOP_P = 1.0, 0.9          # the paper's sampling for self-training


@dataclass
class JSFTOptions(onpolicy.JudgeTemplateOptions):
    jsft_judge: bool = option(True, "add the judgment instructions (false = SFT on chosen only, the "
                              "control for 'does JSFT improve judging?')")


@dataclass
class SelfJudgeOptions(onpolicy.OnPolicyOptions):
    judge: str = option("ref", "who judges the samples: 'ref' (the frozen JSFT start, the paper's "
                        "choice) or 'policy' (the model being trained); a --judge_from checkpoint "
                        "judges instead of 'ref' ('policy' with --judge_from is an error)",
                        choices=("ref", "policy"))


def one_judge(cfg):
    """--judge policy with --judge_from: the round would judge by the --judge_from checkpoint
    (onpolicy.judge_of takes it first), so the policy never judges: refused, not ignored."""
    if cfg.judge == "policy" and cfg.judge_from:
        return f"--judge policy: --judge_from {cfg.judge_from} judges instead of the policy; drop one of them"
    return None


def jsft_rows(rows, cfg, split, run):
    """Preference rows -> SFT rows: (x, y_w), plus judgments of each pair in both orders."""
    t = onpolicy.template_of(cfg, run.tok)
    out = [{"prompt": r["prompt"], "response": r["chosen"], "_where": r.get("_where", "row")}
           for r in rows]
    if not cfg.jsft_judge:
        return out
    return out + onpolicy.judgment_data(rows, t, run, split)


def judge_and_orient(run, cfg, judge, ptexts, first, second):
    """Judge each (first, second) sample pair, position-swapped, by the paper's likelihood rule
    (cfg.likelihood) and the win rate under principles; `judge` = (model, its tokenizer), which reads the
    samples' decoded texts. (wins, losses, metrics)."""
    (jm, jtok), t = judge, TEMPLATES[cfg.judge_template]
    a, b = [run.tok.decode(x) for x in first], [run.tok.decode(x) for x in second]
    p = onpolicy.judge_probs(jm, jtok, t, ptexts, a, b, run.principles,
                             likelihood=cfg.likelihood, combine="win_rate")
    wins, losses = onpolicy.orient(first, second, p)
    return wins, losses, onpolicy.agreement(run.task, ptexts, a, b, p.tolist())


def self_judge_rollout(model, batch, run, cfg):
    """Sec. 3.2, one round (the loop calls it with no gradients, then the DPO loss on its pairs):
    two samples per prompt from pi_theta, judged with position swap by pi_ref (--judge policy: by
    pi_theta; --judge_from: by that checkpoint), oriented into (chosen, rejected)."""
    prompts, ptexts = batch["prompts"], [e["row"]["prompt"] for e in batch["examples"]]
    clock = onpolicy.Clock()
    n_new = onpolicy.new_tokens(cfg, model)      # --gen_max_tokens, or its auto by the model's size
    s = onpolicy.sample(model, run.tok, prompts, 2, TEMPERATURE, TOP_P, n_new)
    clock.lap("t_sample")
    judge = onpolicy.judge_of(run, model if cfg.judge == "policy" else run.ref)
    wins, losses, agree = judge_and_orient(run, cfg, judge, ptexts, [x[0] for x in s], [x[1] for x in s])
    clock.lap("t_judge")
    pairs = onpolicy.pair_batch(prompts, wins, losses, run.tok.pad_id, model.lm_head.weight.device,
                                packed_batches(cfg, model))
    return pairs, {**agree, **onpolicy.cost([y for x in s for y in x], clock, 2 * len(s))}


def offpolicy_rollout(model, batch, run, cfg):
    """The off-policy baseline's round: each distinct prompt's pair is sampled from pi_ref with a
    generator seeded by (seed, prompt) and judged once, by pi_ref (or the --judge_from checkpoint),
    and the oriented pair is cached: the cache is the same after a resume, whatever the batch a
    prompt first appears in."""
    prompts, ptexts = batch["prompts"], [e["row"]["prompt"] for e in batch["examples"]]
    cache = run.memory.setdefault("offpolicy", {})    # prompt ids -> (chosen sample, rejected sample)
    clock = onpolicy.Clock()
    new = [i for i, p in enumerate(prompts) if tuple(p) not in cache]
    # pi_ref samples, at the length the policy's size gives (the same model): under --lora_r pi_ref is
    # the policy with its adapters off (AdaptersOff), which holds no weights of its own to count
    s, n_new = [], onpolicy.new_tokens(cfg, model)
    for i in new:
        g = torch.Generator(model.lm_head.weight.device)
        g.manual_seed(zlib.crc32(repr((cfg.seed, prompts[i])).encode()))
        s += onpolicy.sample(run.ref, run.tok, [prompts[i]], 2, TEMPERATURE, TOP_P, n_new, g)
    clock.lap("t_sample")
    agree = {}
    if new:
        w, lo, agree = judge_and_orient(run, cfg, onpolicy.judge_of(run, run.ref),
                                        [ptexts[i] for i in new], [x[0] for x in s], [x[1] for x in s])
        cache.update({tuple(prompts[i]): (a, b) for i, a, b in zip(new, w, lo)})
    clock.lap("t_judge")
    wins, losses = map(list, zip(*[cache[tuple(p)] for p in prompts]))
    pairs = onpolicy.pair_batch(prompts, wins, losses, run.tok.pad_id, model.lm_head.weight.device,
                                packed_batches(cfg, model))
    m = {**agree, **onpolicy.cost(wins + losses, clock, 2 * len(new)), "cached_prompts": float(len(cache))}
    return pairs, m


METRICS = {**DPO_METRICS, **onpolicy.METRICS}
OFFPOLICY_METRICS = {**METRICS, "cached_prompts": "prompts whose pair is cached"}
register(
    Method(name="jsft", reads="pref", eats="sft", unit="n_tokens", loss=sft_loss,
           help="Self-Judge JSFT: SFT on chosen responses + judgment instructions in both orders "
                "(--judge_template, --jsft_judge)", options=JSFTOptions,
           prepare=jsft_rows, metrics=SFT_METRICS, trains_judge=lambda cfg: cfg.jsft_judge,
           # --jsft_judge false reads no labels: its rows are the chosen responses alone
           check_row=lambda cfg: onpolicy.label_check(cfg) if cfg.jsft_judge else None),
    Method(name="self_judge", reads="prompt", eats="prompt", unit="n_examples",
           rollout=self_judge_rollout, loss=pairs_loss(dpo_loss),
           help="Self-Judge: on-policy DPO, two samples per prompt judged by the frozen reference "
                "(--judge policy: by the policy)", options=SelfJudgeOptions, needs_ref=True,
           setup=onpolicy.setup, start_defaults=onpolicy.judging_defaults(onpolicy.LIKELIHOOD),
           check_config=one_judge, metrics=METRICS,
           trl_rate=lambda cfg: "online"),   # --lr 0 on a pretrained model: OnlineDPOConfig's rate
    Method(name="self_judge_offpolicy", reads="prompt", eats="prompt", unit="n_examples",
           rollout=offpolicy_rollout, loss=pairs_loss(dpo_loss),
           help="Self-Judge's off-policy baseline: pairs sampled once from the initial policy, "
                "judged by it, then DPO", options=onpolicy.OnPolicyOptions, needs_ref=True,
           # no trl_rate: pairs sampled once are offline DPO
           setup=onpolicy.setup, start_defaults=onpolicy.judging_defaults(onpolicy.LIKELIHOOD),
           metrics=OFFPOLICY_METRICS),
)
