"""
The judge: a language model asked "which response is better, A or B?", shared by every method that
judges (MO-ORPO's self-judgement data, Self-Judge's JSFT / self-training / self-rejection, OSP).

From the shell, `python -m nanoalign.judge_cli --init_from DIR --pairs pairs.jsonl` prints p(a > b)
of each pair as this module computes it (nanoalign/judge_cli.py).

Three pieces, top to bottom:
1. Templates. A `JudgeTemplate` is a user message with {prompt} {a} {b} (and {principle}), an
   optional system message, and the assistant's answer up to and including the label, e.g.
   "... would be Response {label}". The Self-Judge paper's appendix A.5 templates (arXiv:2402.11253,
   Tables 14-18) are here verbatim in structure; 'compact' ones keep the same shape in few enough bytes for
   the built-in task's byte-level tiny model (the A.5 UltraFeedback template alone is ~500 bytes,
   the tiny model's whole context is 512). MO-ORPO's ~50 self-judgement prompt variations are
   JudgeTemplates too, kept with their method in nanoalign/mo_orpo.py.
2. The judge probability (docs/methods.md#likelihood-rules): the next-token logits at the label
   position, one batched forward for all rows, both position orders. Two papers, two rules
   (`likelihood`): Self-Judge ("vocab", section 3.1) averages each response's judge-token
   likelihoods over the two orders, p(a > b) = L_a / (L_a + L_b); OSP ("pair", section 3.2) takes
   the softmax over the two label logits, averaged over the two orders. (This project first gave
   Self-Judge the two-label rule too; its default follows its paper and released code since
   2026-12-04, and --likelihood pair restores the other.) Under a principle template,
   one judgment per principle, combined by the Self-Judge paper's principle-aware rule
   (`win_rate`) or, for OSP, by the mean (`combine`).
3. The single-elimination tournament (self-rejection): N candidates, N-1 judgments, one batched
   judge call per round.
"""
import math
import os
import re
from dataclasses import dataclass

import torch

from model.generate import left_pad
from model.tokenizer import answer_text
from nanoalign.checkpoint import trained_config
from nanoalign.common import evaluating
from nanoalign.suggest import did_you_mean


class JudgeError(ValueError):
    """A judge template that cannot work with this tokenizer, or a malformed name:description list;
    the message names the template or the flag."""


@dataclass(frozen=True)
class JudgeTemplate:
    name: str
    user: str                    # {prompt}, {a}, {b}; principle templates also {principle}
    answer: str                  # the assistant's judgment, ending in "{label}"
    labels: tuple = ("A", "B")   # label of the first / second position
    system: str = None           # may contain {description} (principle-aware)
    rationale: bool = False      # the target continues with "\nEvaluation of ..." (Table 18)
    roles: bool = False          # {prompt} is a dialogue with a role name on every turn (Table 14)


# -- 1. templates ----------------------------------------------------------------------------------
_SYS_HH = ("Below are a series of dialogues between a human user and an AI assistant. The AI tries to "
           "be helpful, harmless, and honest.")
_SYS_UF = ("Below are a series of dialogues between a human user and an AI assistant. The AI tries to "
           "be helpful, honest, truthful and follows the instructions from human.")
_BLOCK = "Instruction:\n-------\n{prompt}\n-------\nResponse A:\n-------\n{a}\n-------\nResponse B:\n-------\n{b}\n-------\n"
_P_Q = "Which is the better response for an assistant when following the principle of '{principle}' for a given instruction?\n"
_P_ANS = "Sure! The option which is better guided by the principle of '{principle}' would be Response {label}"

TEMPLATES = {t.name: t for t in [
    JudgeTemplate("hh", "Which is the more helpful, harmless, and honest assistant from a given context?\n"
                  "Context:\n-------\n{prompt}\n-------\nAssistant A: {a}\nAssistant B: {b}\n"
                  "Please choose either A or B.",
                  "Sure! The option which is more helpful, harmless, and honest would be Assistant {label}",
                  system=_SYS_HH, roles=True),                                      # Table 14
    JudgeTemplate("ultrafeedback", "Which is the better response to be an assistant who is helpful, "
                  "honest, truthful and following the given instruction from user?\n" + _BLOCK +
                  "Please choose either A or B.",
                  "Sure! The option which is more helpful, honest, truthful and following the given "
                  "instruction from user would be Response {label}", system=_SYS_UF),  # Table 15
    JudgeTemplate("principle", _P_Q + _BLOCK + "Please choose either A or B according to the principle "
                  "of '{principle}'.", _P_ANS, system="{description}"),            # Tables 16-17
    JudgeTemplate("principle_rationale", _P_Q + _BLOCK + "Please choose either A or B and evaluate each "
                  "response according to the principle of '{principle}'.",
                  "Sure! Here is the decision of better response and evaluations of each response, "
                  "guided by the principle of '{principle}'.\nDecision: Response {label}",
                  system="{description}", rationale=True),                          # Table 18
    # The same shapes, short enough for the built-in task's 512-byte context.
    JudgeTemplate("compact", "Which response is better?\nQ: {prompt}\nA: {a}\nB: {b}\nChoose A or B.",
                  "Better: {label}"),
    JudgeTemplate("compact_principle", "Which response is better for '{principle}'?\nQ: {prompt}\n"
                  "A: {a}\nB: {b}\nChoose A or B.", "Better for '{principle}': {label}",
                  system="{description}"),
    JudgeTemplate("compact_rationale", "Which response is better for '{principle}'? Explain.\n"
                  "Q: {prompt}\nA: {a}\nB: {b}\nChoose A or B.", "Better for '{principle}': {label}",
                  system="{description}", rationale=True),
]}

def prompt_text(prompt, roles=False):
    """A prompt as the judge (or MetaAligner) reads it: a string as it is; a conversation with its
    role names, one per turn, so the judge can tell the user's turns from the assistant's (a single
    user turn: just its text). roles=True (the hh template, Table 14's "User: ... Assistant: ..."
    context): a role name on every turn, a plain string being one user turn."""
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if not roles and len(turns) == 1 and turns[0]["role"] == "user":
        return turns[0]["content"]
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in turns)


def render(t, prompt, a, b, principle=None, description=None):
    """(messages, answer_with_{label}) for one judgment; {label} is filled in by the caller."""
    if "{principle}" in t.user and not principle:
        raise JudgeError(f"judge template '{t.name}' judges under a principle, and none was given "
                         f"(name them with --principles, or start from a checkpoint whose JSFT data "
                         f"had them)")
    user = t.user.format(prompt=prompt_text(prompt, t.roles), a=a, b=b, principle=principle)
    msgs = [{"role": "user", "content": user}]
    if t.system:
        msgs = [{"role": "system", "content": t.system.format(description=description or "")}] + msgs
    return msgs, t.answer.replace("{principle}", principle or "")


# -- JSFT data: judgment instructions in both orders (Self-Judge sec. 3.1, A.3; OSP augmentation) ---
def judgment_rows(rows, template, principle_aware=False, rationale_fn=None):
    """SFT rows {prompt, response} teaching the judge: each pair in both position orders, target =
    the answer ending in the better response's label (+ a rationale when the template has one).
    principle_aware: one judgment per objective in the row's `labels` that is not 'equal', judged on
    that objective alone, its description from the row's `objectives` as the system message (the
    principle-aware JSFT of Tables 16-18)."""
    out = []
    for r in rows:
        if principle_aware:
            jobs = [(k, r["objectives"][k], lab) for k, lab in r["labels"].items() if lab != "equal"]
        else:
            jobs = [(None, None, "1")]
        for name, desc, lab in jobs:
            # a KeyError, not a reversed judgment, for a label that rows.check_labels did not read
            better, worse = {"1": (r["chosen"], r["rejected"]), "2": (r["rejected"], r["chosen"])}[lab]
            better, worse = answer_text(better), answer_text(worse)
            for first_better in (True, False):
                a, b = (better, worse) if first_better else (worse, better)
                msgs, _ = render(template, r["prompt"], a, b, name, desc)
                # label first, then the principle, both by replace: the principle is an objective
                # name from the user's labels, any string, braces too (str.format would read them)
                resp = (template.answer.replace("{label}", template.labels[0 if first_better else 1])
                        .replace("{principle}", name or ""))
                if template.rationale:
                    resp += (f"\nEvaluation of Response A: {rationale_fn(r['prompt'], a, name)}"
                             f"\nEvaluation of Response B: {rationale_fn(r['prompt'], b, name)}")
                out.append({"prompt": msgs, "response": resp, "keep_whole": True,   # never cut the label
                            "_where": r.get("_where", "row")})   # a bad one names its pair's line
    return out


# -- 2. the judge probability ------------------------------------------------------------------------
def label_ids(tok, t):
    """(prefix_text, (id_first, id_second)): the answer up to the label, and the two label tokens.
    Tokenizers differ on where the space before a label goes ('Response' + ' A' in GPT-2 BPE,
    'Response ' + 'A' byte-level); take the split where prefix + label = prefix ids + one token."""
    head = t.answer.split("{label}")[0]
    if t.answer.count("{label}") != 1:
        raise JudgeError(f"judge template '{t.name}': the answer must contain {{label}} exactly once")
    splits = [(head, "")] + ([(head.rstrip(" "), " ")] if head.endswith(" ") else [])
    for prefix, sp in splits:
        base = tok.encode(prefix)
        ids = []
        for lab in t.labels:
            full = tok.encode(prefix + sp + lab)
            if (full[:len(base)] == base and len(full) == len(base) + 1
                    and tok.decode([full[-1]], skip_special=False).strip() == lab.strip()):  # not <unk>
                ids.append(full[-1])
        if len(ids) == 2 and ids[0] != ids[1]:
            return prefix, tuple(ids)
    raise JudgeError(f"judge template '{t.name}': the labels {t.labels} are not single, distinct "
                     f"tokens after '{head[-30:]}' in this tokenizer's vocabulary; choose labels that "
                     f"are (e.g. A/B) or another --judge_template")


def judge_ids(tok, t, prefix, prompt, a, b, principle=None, description=None):
    """Prompt ids + the answer up to the label; `prefix` from label_ids (computed once per call)."""
    msgs, _ = render(t, prompt, a, b, principle, description)
    return tok.encode_prompt(msgs) + tok.encode(prefix.replace("{principle}", principle or ""))


# How the two label tokens' probabilities become p(a > b): each paper's own rule, a choice of the caller
# (docs/methods.md#likelihood-rules). The help texts of every --likelihood flag are these.
LIKELIHOODS = {
    "vocab": "the Self-Judge paper's rule (section 3.1; its authors' code takes full-vocabulary "
             "probabilities): each response's label likelihood over the whole vocabulary, averaged "
             "over both position orders, p(a > b) = L_a / (L_a + L_b)",
    "pair": "the OSP paper's rule (section 3.2): the softmax over the two label logits only, "
            "averaged over both position orders",
}

# How a checkpoint judges: what its run recorded (state.json), else one default for every tool that
# judges with it (the on-policy methods, sample.py --best_of, nanoalign/judge_cli.py). 'compact'
# fits a small model's context; 'vocab' is the Self-Judge paper's rule (OSP's own: nanoalign/osp.py)
JUDGING = ("judge_template", "likelihood")
JUDGE_TEMPLATE = "compact"
LIKELIHOOD = "vocab"


def recorded_judging(ckpt_dir):
    """{judge_template, likelihood} as a checkpoint's run recorded them (its state.json config): the
    template a JSFT / pref_aug run trained its judge on and the rule it is to judge by, or those an
    on-policy run judged with; {} for a checkpoint train.py did not write, or a run of a method
    with neither (SFT, DPO)."""
    saved = trained_config(ckpt_dir)
    return {k: saved[k] for k in JUDGING if k in saved}


def judging(src, given, rule=LIKELIHOOD):
    """How the checkpoint `src` judges, {judge_template, likelihood}: each as `given` (a flag's
    value; None or '' = not given), else as `src` records (recorded_judging), else 'compact' and
    `rule` (the caller's paper's). The one resolution for every tool that judges (the on-policy
    methods, sample.py --best_of, nanoalign/judge_cli.py), so a checkpoint judges alike in
    each. A name none of TEMPLATES / LIKELIHOODS knows (a typo; a template renamed since the run
    recorded it) is a JudgeError saying where the name came from."""
    rec, out = recorded_judging(src), {}
    for k, known, fallback in (("judge_template", TEMPLATES, JUDGE_TEMPLATE), ("likelihood", LIKELIHOODS, rule)):
        out[k] = given.get(k) or rec.get(k) or fallback
        if out[k] not in known:
            whose = (f"--{k} {out[k]!r} is unknown" if given.get(k) else
                     f"{os.path.join(src, 'state.json')} records {k} {out[k]!r}, which is unknown here "
                     f"(override it with --{k})")
            raise JudgeError(f"{whose}; choose from {', '.join(known)}" + did_you_mean(out[k], known))
    return out


def label_logprobs(model, tok, t, items, likelihood="vocab", batch_size=64):
    """(N, 2): log-probabilities of the first and the second position's label, read from the
    next-token logits at the label position, for items = [(prompt, a, b) or (prompt, a, b,
    principle, description)]. likelihood 'vocab': log_softmax over the whole vocabulary (the
    labels' share of every possible next token); 'pair': log_softmax over the two label logits
    only (the two probabilities sum to 1). Left-padded batches; the model scores in eval mode (no
    dropout), its mode restored after."""
    if likelihood not in LIKELIHOODS:
        raise JudgeError(f"likelihood {likelihood!r} is unknown; choose from {', '.join(LIKELIHOODS)}")
    prefix, (ia, ib) = label_ids(tok, t)
    out = []
    dev = model.lm_head.weight.device
    with evaluating(model):
        for i in range(0, len(items), batch_size):
            ids, mask = left_pad([judge_ids(tok, t, prefix, *it) for it in items[i:i + batch_size]],
                                 tok.pad_id or 0, dev)                               # (B, L)
            h = model(ids, mask)[:, -1]                                              # (B, dim)
            logits = model.logits(h).float()                                         # (B, V)
            if likelihood == "vocab":
                out.append(torch.log_softmax(logits, -1)[:, [ia, ib]])              # (B, 2)
            else:
                out.append(torch.log_softmax(logits[:, [ia, ib]], -1))              # (B, 2)
    return torch.cat(out) if out else torch.zeros(0, 2)


def first_probs(model, tok, t, items, batch_size=64):
    """p_A: the probability of the FIRST position's label, softmax over the two label tokens only."""
    return label_logprobs(model, tok, t, items, "pair", batch_size)[:, 0].exp()


def swapped_loglik(model, tok, t, items, likelihood="vocab", batch_size=64):
    """(N, 2): log L_a, log L_b, each response's label likelihood averaged over both position orders,
        L_a = 1/2 [P(label 1 | J(x, a, b)) + P(label 2 | J(x, b, a))]
        L_b = 1/2 [P(label 2 | J(x, a, b)) + P(label 1 | J(x, b, a))]
    with P as `likelihood` says; both orders in one pass. Kept as logs: a full-vocabulary label
    probability can be tiny, and p = L_a / (L_a + L_b) is then sigmoid(log L_a - log L_b)."""
    swapped = [(it[0], it[2], it[1], *it[3:]) for it in items]
    lp = label_logprobs(model, tok, t, list(items) + swapped, likelihood, batch_size)   # (2N, 2)
    n = len(items)
    la = torch.logaddexp(lp[:n, 0], lp[n:, 1]) - math.log(2)                         # (N,)
    lb = torch.logaddexp(lp[:n, 1], lp[n:, 0]) - math.log(2)                         # (N,)
    return torch.stack([la, lb], 1)


def swapped_probs(model, tok, t, items, batch_size=64, likelihood="vocab"):
    """p(y1 > y2) = L_1 / (L_1 + L_2), the position-swapped likelihoods of swapped_loglik. Under
    'pair' L_1 + L_2 = 1, so this is 1/2 [p_A(J(x, y1, y2)) + p_B(J(x, y2, y1))]. Either way
    p(y1 > y2) + p(y2 > y1) = 1, and a judge that always picks position A gets 1/2."""
    L = swapped_loglik(model, tok, t, items, likelihood, batch_size)
    return torch.sigmoid(L[:, 0] - L[:, 1])


def check_template(tok, t):
    """Start-up check: fail before any training if the labels cannot be read off one token, or if
    this tokenizer's chat template refuses a judgment (a judge checkpoint of another family)."""
    prefix, _ = label_ids(tok, t)
    try:
        judge_ids(tok, t, prefix, "x", "a", "b", "p", "d")
    except ValueError as e:                 # the chat template's own refusal (a TemplateError)
        raise JudgeError(f"judge template '{t.name}': the chat template cannot render it ({e})") from None
    return t


def win_rate(P, tie=None):
    """The win rate, the Self-Judge paper's principle-aware rule (section 3.1; its "JM-PR", Tables 5-6,
    is the judge trained with principles and rationales, not the rule): P[k, i] = p(a_i > b_i) under
    principle k. The judge prefers a_i when it wins under more than half of the principles (a
    probability of exactly 1/2 counts half a win); on a tie, when `tie` is >= 1/2: the paper's "mean
    likelihood of judge tokens across principles", mean L_a against mean L_b (judge_pairs passes
    it; the default, the mean of P, is the same under the 'pair' rule, where L_a + L_b = 1).
    Returns p with p >= 1/2 exactly when a_i is preferred: the win rate, or `tie` where the win rate
    is exactly 1/2."""
    wins = (P > 0.5).to(P.dtype) + 0.5 * (P == 0.5).to(P.dtype)      # (K, N)
    rate = wins.mean(0)                                              # (N,)
    return torch.where(rate == 0.5, P.mean(0) if tie is None else tie, rate)


def principle_mean(P):
    """OSP under several principles (docs/methods.md#target-strength): p = the mean over principles
    of each principle's position-swapped probability. OSP's paper has one judge prompt; the mean
    rises with every principle's probability and, for one principle, is that principle's p, so the
    SPCE target stays soft (the win rate would make it 0 or 1)."""
    return P.mean(0)


def judge_pairs(model, tok, t, items, principles=None, batch_size=64, likelihood="vocab",
                combine="win_rate"):
    """p(a > b) for (prompt, a, b) items, both position orders, label probabilities as `likelihood`
    says. A principle template judges under each of `principles` [(name, description)] and
    combines them by `combine`: 'win_rate' (Self-Judge) or 'mean' (OSP); without one, principles are
    unused."""
    if combine not in ("win_rate", "mean"):
        raise JudgeError(f"combine {combine!r} is unknown; choose 'win_rate' or 'mean'")
    if "{principle}" not in t.user:
        return swapped_probs(model, tok, t, items, batch_size, likelihood)
    if not principles:
        raise JudgeError(f"judge template '{t.name}' judges under principles, and none were given "
                         f"(--principles name:description,...)")
    L = torch.stack([swapped_loglik(model, tok, t, [(x, a, b, n, d) for x, a, b in items], likelihood,
                                    batch_size) for n, d in principles])   # (K, N, 2) log L_a, log L_b
    P = torch.sigmoid(L[..., 0] - L[..., 1])                                # (K, N)
    if combine == "mean":
        return principle_mean(P)
    mean_l = torch.logsumexp(L, 0)                    # (N, 2): log (K x mean likelihood), K cancels
    return win_rate(P, torch.sigmoid(mean_l[:, 0] - mean_l[:, 1]))


# -- 3. the tournament -------------------------------------------------------------------------------
def tournament(n, judge_fn):
    """Single elimination over candidates 0..n-1. judge_fn(list of (i, j)) -> list of p(i > j); it
    is called once per round, with all of that round's pairs (batched). Winners advance (ties go to
    the first); an odd one out gets a bye. Exactly n - 1 pairs are judged. Returns the winner."""
    alive = list(range(n))
    while len(alive) > 1:
        pairs = [(alive[k], alive[k + 1]) for k in range(0, len(alive) - 1, 2)]
        probs = judge_fn(pairs)
        nxt = [i if float(p) >= 0.5 else j for (i, j), p in zip(pairs, probs)]
        alive = nxt + ([alive[-1]] if len(alive) % 2 else [])
    return alive[0]


def best_of(model, tok, t, prompt, candidates, batch_size=64, principles=None, likelihood="vocab"):
    """Self-rejection (Self-Judge section 3.3): the tournament winner among the candidate responses
    (texts) to one prompt; a principle template decides each match by win rate."""
    def judge_fn(pairs):
        return judge_pairs(model, tok, t, [(prompt, candidates[i], candidates[j]) for i, j in pairs],
                           principles, batch_size, likelihood).tolist()
    return tournament(len(candidates), judge_fn)


NAME = r"[\w-]+"                             # a principle's or objective's name: letters, digits, _, -
_NEW_ENTRY = re.compile(rf"\s*{NAME}\s*:")     # what follows a comma that starts the next entry


def parse_named(spec, where, bare=False):
    """'name:description,name:description' -> [(name, description)], the list syntax of
    --principles and --objectives; with `bare`, a name may stand alone (its description is '').

    A comma starts a new entry only where a new 'name:' follows it, or after a bare name, so a
    description may hold commas: 'helpfulness:accurate, relevant, and up-to-date' is one entry, and
    'honesty:be honest, e.g.: hedge' too ('e.g.' is no name). Empty entries (',,', a trailing comma)
    are skipped. A bad entry is a JudgeError naming `where` and the entry."""
    entries = []
    for piece in spec.split(","):
        if entries and ":" in entries[-1] and piece.strip() and not _NEW_ENTRY.match(piece):
            entries[-1] += "," + piece          # the description before it goes on
        else:
            entries.append(piece)
    out, syntax = [], "name[:description]" if bare else "name:description"
    for entry in filter(None, (e.strip() for e in entries)):
        name, _, desc = entry.partition(":")
        if not re.fullmatch(NAME, name.strip()):
            raise JudgeError(f"{where}: '{entry}' must be {syntax}, a name being letters, digits, _ "
                             f"and -")
        if not desc.strip() and not bare:
            raise JudgeError(f"{where}: '{entry}' must be {syntax}")
        out.append((name.strip(), desc.strip()))
    return out


def parse_principles(spec, where="--principles"):
    """'name:description,name:description' -> [(name, description)]; descriptions may hold commas
    (parse_named)."""
    return parse_named(spec, where)
