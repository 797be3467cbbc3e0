"""The on-policy round shared by Self-Judge and OSP (nanoalign/onpolicy.py): sampling and judging under
the run's principles (one judge call per principle, the win rate or the mean by the method's paper), a judge
of its own (--judge_from, even with another vocabulary), pairs oriented by the judge, judgment data,
the principles' sources, batches on the caller's device, and the cost split in the log."""
import json
import string

import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

import train
from nanoalign import REGISTRY, judge, onpolicy
from nanoalign.common import Run
from nanoalign.data import DataError, make_batch, tokenize_rows
from nanoalign.tasks import arith as task
from nanoalign.testing import tiny_model
from tests.helpers import (BYTE_VOCAB, JUDGE, PRINCIPLES, TOK, by_score, call_method, examples, judge_by_rule,
                           method_step, offpolicy_setup, pref_rows, record_on_policy, tiny)


# -- pairs oriented by the judge's rule ------------------------------------------------------------
def blen(ids):
    """The length of a sample as the judge reads it: the bytes of its decoded text."""
    return len(TOK.decode(ids).encode())


def prompt_batch(n):
    rows = [{"prompt": f"What is {i} + {2 * i + 1}?"} for i in range(n)]
    ex, _ = tokenize_rows(rows, TOK, "prompt", 64)
    return make_batch(ex, "prompt", TOK.pad_id)


def policy(seed):
    return tiny_model(seed, **BYTE_VOCAB, max_seq_len=96, init_std=0.3)


@settings(max_examples=examples(5))
@pytest.mark.parametrize("method,opts", [("self_judge", {}), ("osp", {"osp_k": 4}),
                                         ("osp", {"osp_k": 5, "osp_loss": "dpo"})])
@given(seed=st.integers(0, 10_000))
def test_on_policy_pairs_are_oriented_by_the_judge(method, opts, seed):
    with pytest.MonkeyPatch.context() as mp:
        rec = record_on_policy(mp)
        torch.manual_seed(seed)
        loss, _ = call_method(method, policy(seed), prompt_batch(3), tok=TOK, ref=JUDGE,
                              gen_max_tokens=8, **opts)
    assert torch.isfinite(loss)
    (_, wins, losses), = rec.pairs
    lengths = [(blen(w), blen(lo)) for w, lo in zip(wins, losses)]
    assume(any(a != b for a, b in lengths))               # samples of different lengths to judge
    assert all(a >= b for a, b in lengths), lengths


# -- how long a sample may grow --------------------------------------------------------------------
@pytest.mark.parametrize("name, opts", [("self_judge", {}), ("self_judge_offpolicy", {}), ("osp", {"osp_k": 2})])
@pytest.mark.parametrize("flag, large, expected", [(0, False, 32), (0, True, 64), (5, False, 5), (5, True, 5)])
def test_samples_grow_to_gen_max_tokens_or_by_the_models_size(name, opts, flag, large, expected, monkeypatch):
    """--gen_max_tokens 0 (the default) is 32 new tokens for a model under FAST_MIN_PARAMS (the arith
    task's short answers) and TRL OnlineDPOConfig's 64 for a larger one: 32 cut a pretrained chat
    model's answers mid-sentence and trained on them. A number given is taken as it is."""
    from nanoalign import compute
    from tests.helpers import method_config
    asked, real = [], onpolicy.sample

    def sample(model, tok, prompts, n, temperature, top_p, max_new_tokens, *args, **kw):
        asked.append(max_new_tokens)
        return real(model, tok, prompts, n, temperature, top_p, 2, *args, **kw)
    monkeypatch.setattr(onpolicy, "sample", sample)
    judge_by_rule(monkeypatch, lambda x, a, b: 0.7)
    if large:   # any model counts as large: a real one of 20M parameters is too slow for this test
        monkeypatch.setattr(compute, "FAST_MIN_PARAMS", 1)
    tok = task.build_tokenizer()
    x = "What is 1 + 2?"
    batch = {"prompts": [tok.encode_prompt(x)], "examples": [{"row": {"prompt": x}}]}
    cfg = method_config(name, gen_max_tokens=flag, **opts)
    method_step(REGISTRY[name], tiny(0, vocab_size=264), batch, Run(tok=tok, ref=tiny(1, vocab_size=264)), cfg)
    assert asked and set(asked) == {expected}


@pytest.mark.parametrize("name, opts", [("self_judge", {}), ("self_judge_offpolicy", {}), ("osp", {"osp_k": 2})])
@pytest.mark.parametrize("flag, large, lora", [(0, False, 0), (0, True, 0), (5, True, 0), (0, True, 4)])
def test_the_start_of_a_run_says_how_long_its_samples_may_grow(name, opts, flag, large, lora, monkeypatch,
                                                               tmp_path, capsys, start):
    """A researcher reads the start of a run to check its settings: the peak lr was printed, resolved
    from --lr 0, but the sampling length resolved from --gen_max_tokens 0 was not (32 or 64 by the
    model's size), so nothing printed said whether a chat model's samples would be cut at 32 tokens.
    A --lora_r run's samples grow as far as it says too: its reference (the policy with its adapters
    off, which samples the off-policy baseline's pairs) holds no weights of its own to be sized by."""
    import re

    from nanoalign import compute
    from tests.helpers import run_cfg
    asked, real = [], onpolicy.sample

    def sample(model, tok, prompts, n, temperature, top_p, max_new_tokens, *args, **kw):
        asked.append(max_new_tokens)
        return real(model, tok, prompts, n, temperature, top_p, 2, *args, **kw)
    monkeypatch.setattr(onpolicy, "sample", sample)
    if large:   # the tiny model counts as large, in float32: a real one is too slow for this test
        monkeypatch.setattr(compute, "FAST_MIN_PARAMS", 1)
        monkeypatch.setattr(compute, "cpu_bf16_trains_faster", lambda: False)
    train.train(run_cfg(tmp_path, method=name, max_steps=1, grad_accum=1, val_data="",
                        gen_max_tokens=flag, lora_r=lora, init_from=start if lora else "scratch", **opts))
    said = re.findall(r"^samples up to (\d+) new tokens( \(--gen_max_tokens 0: auto)?",
                      capsys.readouterr().out, re.M)
    assert asked and said == [(str(asked[0]), "" if flag else " (--gen_max_tokens 0: auto")]
    assert set(asked) == {asked[0]}


# -- the cost split in the log ---------------------------------------------------------------------
def test_osp_and_self_judge_steps_log_the_cost_split(tmp_path):
    import dataclasses
    import json

    import train
    from tests.helpers import run_cfg
    for method, extra in (("osp", {"osp_k": 3}), ("osp", {"pairing": "raft", "osp_k": 3}),
                          ("self_judge", {}), ("self_judge_offpolicy", {})):
        cfg = dataclasses.replace(run_cfg(tmp_path / method, method=method, max_steps=1, grad_accum=1,
                                          val_data="", gen_max_tokens=6), **extra)
        train.train(cfg)
        rec = json.loads(open(tmp_path / method / "run" / "metrics.jsonl").readline())
        assert {"t_sample", "t_judge", "step_s", "sample_len"} <= set(rec), method
        assert rec["t_sample"] + rec["t_judge"] <= rec["step_s"] + 1e-3


def test_the_cost_split_of_a_step_counts_every_micro_batch(tmp_path, monkeypatch):
    """t_sample and t_judge are the step's seconds (the rest of step_s is the update), so with
    --grad_accum 3 they add the three rollouts' laps: each sampling call here takes 0.3 s or more."""
    import time

    from tests.helpers import run_cfg
    real = onpolicy.sample

    def slow(*a, **kw):
        time.sleep(0.3)
        return real(*a, **kw)
    monkeypatch.setattr(onpolicy, "sample", slow)
    train.train(run_cfg(tmp_path, method="self_judge", max_steps=1, grad_accum=3, val_data="",
                        gen_max_tokens=3))
    rec = json.loads(open(tmp_path / "run" / "metrics.jsonl").readline())
    assert rec["t_sample"] >= 3 * 0.3
    assert rec["t_sample"] + rec["t_judge"] <= rec["step_s"] + 1e-3


def test_a_rollout_metric_is_averaged_over_the_micro_batches_that_logged_it():
    """judge_agree is logged only where the oracle ranks some pair: a micro-batch without one has
    no agreement to count, not an agreement of 0."""
    import types
    mets = iter([{"judge_agree": 1.0, "judge_pairs": 2.0, "sample_len": 4.0}, {"sample_len": 6.0}])
    method = types.SimpleNamespace(unit="n_examples", rollout=lambda model, b, run, cfg: (b, next(mets)))
    cfg = train.make_config(method="self_judge")
    _, got = train.rollout(tiny(), method, [{"n_examples": 2}, {"n_examples": 2}], None, cfg)
    assert got == {"judge_agree": 1.0, "judge_pairs": 2.0, "sample_len": 5.0}


def step_of(micro_metrics, units=None):
    """The logged metrics of one step whose micro-batches' rollouts returned these metrics (and
    held these examples: 2 each unless given)."""
    import types
    mets = iter(micro_metrics)
    method = types.SimpleNamespace(unit="n_examples", rollout=lambda model, b, run, cfg: (b, next(mets)))
    micro = [{"n_examples": n} for n in units or [2] * len(micro_metrics)]
    return train.rollout(tiny(), method, micro, None, train.make_config(method="self_judge"))[1]


# one pair of "What is 2 + 2?" per outcome: the oracle ranks "4." over "5." (or ties "4." with
# "4."), and the judge's p picks the first response or the second
X = "What is 2 + 2?"
PAIR = {"hit": ("4.", "5.", 0.9), "miss": ("4.", "5.", 0.1), "tie": ("4.", "4.", 0.9)}


def agreement_of(outcomes):
    a, b, p = zip(*[PAIR[o] for o in outcomes]) if outcomes else ((), (), ())
    return onpolicy.agreement(task, [X] * len(outcomes), list(a), list(b), list(p))


def test_judge_agree_of_a_step_is_the_fraction_of_all_its_ranked_pairs():
    """Two micro-batches of two prompts each: the first ranks one pair (a hit) and ties the other,
    the second ranks both (two misses). By hand: 1 hit of 3 ranked pairs. Weighting each
    micro-batch's fraction by its examples gave (1 + 0) / 2."""
    got = step_of([agreement_of(["hit", "tie"]), agreement_of(["miss", "miss"])])
    assert got["judge_agree"] == pytest.approx(1 / 3) and got["judge_pairs"] == 3


@settings(max_examples=examples(15))
@given(st.lists(st.tuples(st.lists(st.sampled_from(sorted(PAIR)), max_size=5), st.integers(1, 4)),
                min_size=1, max_size=4))
def test_judge_agree_counts_every_ranked_pair_of_the_step_alike(micro):
    """Whatever the micro-batches' sizes and ties: the step's hits over the step's ranked pairs, the
    count logged as judge_pairs; neither is logged where nothing was ranked."""
    outcomes = [o for outs, _ in micro for o in outs]
    hits, ranked = outcomes.count("hit"), len(outcomes) - outcomes.count("tie")
    got = step_of([agreement_of(outs) for outs, _ in micro], units=[n for _, n in micro])
    if ranked:
        assert got["judge_agree"] == pytest.approx(hits / ranked) and got["judge_pairs"] == ranked
    else:
        assert "judge_agree" not in got and "judge_pairs" not in got


def test_samples_per_s_of_a_step_is_its_samples_over_its_sampling_seconds():
    """4 samples in 1 s, then 4 in 3 s: 8 samples in 4 s of sampling, 2 per second (not the mean
    of the two micro-batches' rates, 8/3), and t_sample the 4 s."""
    import types

    def cost(n, seconds):
        return onpolicy.cost([[1, 2]] * n, types.SimpleNamespace(laps={"t_sample": seconds}), n)
    got = step_of([cost(4, 1.0), cost(4, 3.0)])
    assert got["samples_per_s"] == pytest.approx(2.0) and got["t_sample"] == pytest.approx(4.0)


# -- principles, each paper's judging rule, a judge of its own -------------------------------------
def test_on_policy_judging_runs_once_per_principle_and_never_renders_a_missing_one(monkeypatch):
    seen = []

    def stub(model, tok, t, items, likelihood="vocab", batch_size=64):
        for it in items:
            assert len(it) == 5 and it[3], "a principle template item without its principle"
            msgs, _ = judge.render(t, *it)
            assert "None" not in msgs[-1]["content"]
            seen.append(it[3])
        # a prefers under 'correct' only; b under the other two: the win rate picks b
        p = torch.tensor([0.9 if it[3] == "correct" else 0.2 for it in items])
        return torch.stack([p.log(), (1 - p).log()], 1)         # log L_a, log L_b

    monkeypatch.setattr(judge, "swapped_loglik", stub)
    tok = task.build_tokenizer()
    t = judge.TEMPLATES["compact_principle"]
    p = onpolicy.judge_probs(tiny(), tok, t, ["What is 1 + 1?"], ["2."], ["3"], PRINCIPLES)
    assert sorted(set(seen)) == sorted(n for n, _ in PRINCIPLES) and len(seen) == 3
    assert p.item() < 0.5
    with pytest.raises(judge.JudgeError, match="principle"):
        judge.render(t, "q", "a", "b")                       # no principle: an error, not "None"


@pytest.mark.parametrize("likelihood", ["vocab", "pair"])
@pytest.mark.parametrize("combine, want", [("mean", (0.95 + 0.4 + 0.4) / 3), ("win_rate", 1 / 3)])
def test_on_policy_judging_uses_the_likelihood_rule_and_combination_it_is_given(likelihood, combine,
                                                                                want, monkeypatch):
    """OSP judges by the 'pair' rule and the mean over principles, Self-Judge by 'vocab' and the win rate:
    judge_probs must hand both choices on. Under principle 'correct' a wins with p = 0.95, under the
    other two it loses (0.4): the mean prefers a, the win rate (one win of three) prefers b."""
    rules = []

    def stub(model, tok, t, items, likelihood="vocab", batch_size=64):
        rules.append(likelihood)
        p = torch.tensor([0.95 if it[3] == "correct" else 0.4 for it in items], dtype=torch.float64)
        return torch.stack([p.log(), (1 - p).log()], 1)         # log L_a, log L_b
    monkeypatch.setattr(judge, "swapped_loglik", stub)
    p = onpolicy.judge_probs(tiny(), task.build_tokenizer(), judge.TEMPLATES["compact_principle"],
                             ["What is 1 + 1?"], ["2."], ["3"], PRINCIPLES, likelihood=likelihood,
                             combine=combine)
    assert rules == [likelihood] * len(PRINCIPLES)
    assert p.item() == pytest.approx(want)


def test_principles_come_from_the_flag_or_the_jsft_checkpoint(tmp_path):
    t = judge.TEMPLATES["compact_principle"]
    cfg = train.make_config(method="self_judge", init_from=str(tmp_path), principles="honesty:tells the truth")
    assert onpolicy.principles_of(cfg, t) == [("honesty", "tells the truth")]
    cfg = train.make_config(method="self_judge", init_from=str(tmp_path))
    with pytest.raises(judge.JudgeError, match="--principles"):
        onpolicy.principles_of(cfg, t)
    (tmp_path / onpolicy.PRINCIPLES_FILE).write_text(json.dumps(dict(PRINCIPLES)))
    assert onpolicy.principles_of(cfg, t) == PRINCIPLES
    assert onpolicy.principles_of(cfg, judge.TEMPLATES["compact"]) is None


def test_an_on_policy_run_keeps_the_principles_it_judged_under(tmp_path):
    run = Run(tok=task.build_tokenizer())
    cfg = train.make_config(method="self_judge", judge_template="compact_principle",
                            principles="honesty:tells the truth,brevity:is short")
    onpolicy.setup(run, cfg, "cpu")
    assert run.checkpoint_files == {onpolicy.PRINCIPLES_FILE: {"honesty": "tells the truth",
                                                               "brevity": "is short"}}
    run = Run(tok=task.build_tokenizer())
    onpolicy.setup(run, train.make_config(method="osp"), "cpu")
    assert run.checkpoint_files == {}                    # a plain template judges under none


@pytest.mark.parametrize("name, opts, rule", [
    ("self_judge", {}, ("vocab", "win_rate")),
    ("self_judge_offpolicy", {}, ("vocab", "win_rate")),
    ("osp", {"osp_k": 2}, ("pair", "mean")),
    ("osp", {"osp_k": 2, "pairing": "raft"}, ("pair", "mean")),
    ("self_judge", {"likelihood": "pair"}, ("pair", "win_rate")),
    ("osp", {"osp_k": 2, "likelihood": "vocab"}, ("vocab", "mean")),
])
def test_each_method_judges_by_its_papers_rule_unless_told_otherwise(name, opts, rule, monkeypatch):
    """Self-Judge: full-vocabulary likelihoods, principles by win rate; OSP: the two-label softmax,
    principles by the mean. --likelihood picks the other rule."""
    from tests.helpers import method_config
    tok = task.build_tokenizer()
    asked = []

    def rule_stub(j, tok, t, prompts, a, b, principles=None, likelihood=None, combine=None):
        asked.append((likelihood, combine))
        return torch.full((len(prompts),), 0.7)
    monkeypatch.setattr(onpolicy, "judge_probs", rule_stub)
    x = "What is 1 + 2?"
    batch = {"prompts": [tok.encode_prompt(x)], "examples": [{"row": {"prompt": x}}]}
    cfg = method_config(name, gen_max_tokens=3, **opts)
    method_step(REGISTRY[name], tiny(0, vocab_size=264), batch, Run(tok=tok, ref=tiny(1, vocab_size=264)), cfg)
    assert asked and set(asked) == {rule}


def test_judge_from_judges_in_place_of_the_reference(monkeypatch):
    tok = task.build_tokenizer()
    policy, ref, other = tiny(0, vocab_size=264), tiny(1, vocab_size=264), tiny(2, vocab_size=264)
    used = []

    def rule(j, tok, t, prompts, a, b, principles=None, **how):
        used.append(j)
        return torch.full((len(prompts),), 0.7)

    monkeypatch.setattr(onpolicy, "judge_probs", rule)
    batch = {"prompts": [tok.encode_prompt("What is 1 + 2?")], "examples": [{"row": {"prompt": "What is 1 + 2?"}}]}
    for name in ("self_judge", "osp"):
        cfg = train.make_config(method=name, gen_max_tokens=3, osp_k=2) if name == "osp" else \
            train.make_config(method=name, gen_max_tokens=3)
        used.clear()
        method_step(REGISTRY[name], policy, batch, Run(tok=tok, ref=ref, judge=other), cfg)
        assert used and all(j is other for j in used), name
        used.clear()
        method_step(REGISTRY[name], policy, batch, Run(tok=tok, ref=ref), cfg)
        assert used and all(j is ref for j in used), name


def char_tokenizer():
    """A tokenizer unlike the built-in task's: one id per printable ASCII character (101 ids in all,
    the built-in task's has 264, and other ids for the same characters) and the chatml template
    instead of selfjudge."""
    from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models
    from model.tokenizer import Tokenizer
    chars = [c for c in string.printable if c not in "\r\x0b\x0c"]
    hf = HFTokenizer(models.BPE(vocab={"[UNK]": 0, **{c: i + 1 for i, c in enumerate(chars)}}, merges=[],
                                unk_token="[UNK]"))
    hf.decoder = decoders.Fuse()
    hf.add_special_tokens([AddedToken(x, special=True, normalized=False)
                           for x in ("<|im_start|>", "<|im_end|>", "<|pad|>")])
    return Tokenizer(hf, eos_id=hf.token_to_id("<|im_end|>"), pad_id=hf.token_to_id("<|pad|>"),
                     chat_format="chatml")


@pytest.mark.parametrize("name", ["self_judge", "osp"])
def test_a_judge_of_another_vocabulary_reads_the_samples_with_its_own_tokenizer(name, monkeypatch):
    from tests.helpers import method_config, record_on_policy
    tok, jtok = task.build_tokenizer(), char_tokenizer()
    policy, ref = tiny(0, vocab_size=264, max_seq_len=128), tiny(1, vocab_size=264, max_seq_len=128)
    jm = tiny(2, vocab_size=jtok.vocab_size, max_seq_len=256)
    read, real = [], jm.forward

    def forward(ids, mask, *a, **k):                     # every judge row, padding removed
        read.extend(r[m.bool()].tolist() for r, m in zip(ids, mask))
        return real(ids, mask, *a, **k)
    jm.forward = forward
    rec = record_on_policy(monkeypatch)
    x = "What is 1 + 2?"
    batch = {"prompts": [tok.encode_prompt(x)], "examples": [{"row": {"prompt": x}}]}
    cfg = method_config(name, gen_max_tokens=3, **({"osp_k": 3} if name == "osp" else {}))
    method_step(REGISTRY[name], policy, batch, Run(tok=tok, ref=ref, judge=jm, judge_tok=jtok), cfg)
    texts = [tok.decode(y) for y in rec.samples[-1][0]] + [""]          # the samples, and OSP's blank
    t = judge.TEMPLATES["compact"]
    prefix, _ = judge.label_ids(jtok, t)
    own = {tuple(judge.judge_ids(jtok, t, prefix, x, a, b)) for a in texts for b in texts}
    assert read and all(tuple(r) in own for r in read)   # the judge's own ids of the decoded texts
    assert max(max(r) for r in read) < jtok.vocab_size
    if name == "self_judge":                             # one pair, both position orders
        a, b = texts[:2]
        assert sorted(map(tuple, read)) == sorted(tuple(judge.judge_ids(jtok, t, prefix, x, *o))
                                                  for o in ((a, b), (b, a)))


def test_a_judge_that_cannot_render_its_prompts_is_refused_at_start_up():
    """A --judge_from tokenizer without a chat template (or whose template refuses the judgment)
    cannot be bridged: one error naming why, before any step."""
    from model.chat_template import ChatTemplate
    from model.checkpoint import CheckpointError
    tok = task.build_tokenizer()
    bare = char_tokenizer()
    bare.template = None                                 # a checkpoint with no template of its own
    with pytest.raises(CheckpointError, match="no chat template"):
        onpolicy.setup(Run(tok=tok, judge_tok=bare), train.make_config(method="self_judge"), "cpu")
    strict = char_tokenizer()                            # a template that refuses system messages
    strict.template = ChatTemplate("{% for m in messages %}{% if m['role'] == 'system' %}"
                                   "{{ raise_exception('no system messages') }}{% endif %}"
                                   "{{ m['content'] }}{% endfor %}", "strict template")
    cfg = train.make_config(method="self_judge", judge_template="compact_principle", principles="a:b")
    with pytest.raises(judge.JudgeError, match="'compact_principle': the chat template cannot render it"):
        onpolicy.setup(Run(tok=tok, judge_tok=strict), cfg, "cpu")


def test_train_judges_with_the_judge_from_checkpoints_own_tokenizer(tmp_path):
    from model.checkpoint import save_model
    from tests.helpers import run_cfg
    jtok = char_tokenizer()
    save_model(tiny(2, vocab_size=jtok.vocab_size, max_seq_len=512), str(tmp_path / "judge"), jtok)
    cfg = run_cfg(tmp_path, method="self_judge", judge_from=str(tmp_path / "judge"), max_steps=1,
                  grad_accum=1, val_data="", gen_max_tokens=3)
    train.train(cfg)                  # the policy's byte ids would be out of this judge's vocabulary
    rec = json.loads(open(tmp_path / "run" / "metrics.jsonl").readline())
    assert rec["step"] == 1 and rec["t_judge"] > 0


def test_a_judge_from_checkpoint_saved_in_bfloat16_judges_as_a_frozen_float32_copy(tmp_path):
    """setup loads a --judge_from judge in float32 whatever its file holds (judge probabilities in
    bfloat16 would round the win rate's ties away), frozen, with the checkpoint's own tokenizer."""
    from model.checkpoint import save_model
    jtok, judge_model = char_tokenizer(), tiny(2, vocab_size=char_tokenizer().vocab_size, max_seq_len=512)
    save_model(judge_model, str(tmp_path / "judge"), jtok, dtype=torch.bfloat16)
    run = Run(tok=task.build_tokenizer())
    onpolicy.setup(run, train.make_config(method="self_judge", judge_from=str(tmp_path / "judge")), "cpu")
    params = list(run.judge.parameters())
    assert params and all(p.dtype == torch.float32 and not p.requires_grad for p in params)
    assert not run.judge.training
    for got, want in zip(params, judge_model.parameters()):      # the file's weights, widened
        assert torch.equal(got, want.detach().to(torch.bfloat16).float())
    assert run.judge_tok.encode("What is 2 + 2?") == jtok.encode("What is 2 + 2?")


# -- judgment data, principles, batches on the caller's device, ties -------------------------------
def test_judgment_data_of_a_plain_template_is_both_orders_of_each_pair():
    from nanoalign.common import Run
    from nanoalign.judge import TEMPLATES, judgment_rows
    from nanoalign.onpolicy import judgment_data
    rows, run = pref_rows(), Run(tok=None)
    got = judgment_data(rows, TEMPLATES["compact"], run)
    assert got == judgment_rows(rows, TEMPLATES["compact"]) and len(got) == 4
    assert run.checkpoint_files == {}


@pytest.mark.parametrize("aware", [False, True])
def test_judgment_rows_name_the_line_their_pair_came_from(aware):
    # a judgment row the template refuses, or one too long, must name its pair's file:line
    from nanoalign.judge import TEMPLATES, judgment_rows
    rows = [{**r, "_where": f"p.jsonl:{i + 1}"} for i, r in enumerate(pref_rows())]
    t = TEMPLATES["compact_principle" if aware else "compact"]
    got = judgment_rows(rows, t, aware)
    assert got and all(g["_where"] in {"p.jsonl:1", "p.jsonl:2"} for g in got)
    assert [g["_where"] for g in got] == sorted(g["_where"] for g in got)    # each pair's, in order


@pytest.mark.parametrize("name", ["fmt {json}", "{0}", "a } b", "{label}s"])
def test_a_principle_named_with_braces_is_judged_under_its_name(name):
    """An objective is a key of the user's 'labels': any string. Its name in the judgment target is
    that string, braces too; it was str.format-ed with the label, so 'fmt {json}' stopped JSFT with
    a KeyError traceback (no file:line)."""
    from nanoalign.judge import TEMPLATES, judgment_rows
    r = {"prompt": "q", "chosen": "good", "rejected": "bad", "_where": "p.jsonl:1",
         "labels": {name: "1"}, "objectives": {name: "d"}}
    got = judgment_rows([r], TEMPLATES["compact_principle"], True)
    assert [g["response"] for g in got] == [f"Better for '{name}': A", f"Better for '{name}': B"]


def test_principle_aware_judgment_data_keeps_its_principles_and_needs_labels():
    from nanoalign.common import Run
    from nanoalign.judge import TEMPLATES, judgment_rows
    from nanoalign.onpolicy import PRINCIPLES_FILE, judgment_data
    t, rows, run = TEMPLATES["compact_principle"], pref_rows(), Run(tok=None)
    got = judgment_data(rows, t, run)
    assert got == judgment_rows(rows, t, True) and len(got) == 2 * 2      # 'format' is a tie
    assert run.checkpoint_files == {PRINCIPLES_FILE: {"correct": "the sum is right", "format": "ends with a period"}}
    for missing in ("labels", "objectives"):
        bad = pref_rows()
        del bad[1][missing]
        with pytest.raises(DataError) as e:
            judgment_data(bad, t, Run(tok=None))
        assert str(e.value) == ("f:2: judge template 'compact_principle' is principle-aware and needs "
                                "'labels' and 'objectives' fields on every row")
    del bad[1]["_where"]
    with pytest.raises(DataError, match="^row: judge template"):
        judgment_data(bad, t, Run(tok=None))


def test_a_rationale_template_needs_a_builtin_task():
    from nanoalign.common import Run
    from nanoalign.judge import TEMPLATES
    from nanoalign.onpolicy import judgment_data
    with pytest.raises(DataError) as e:
        judgment_data(pref_rows(), TEMPLATES["compact_rationale"], Run(tok=None))
    assert str(e.value) == ("judge template 'compact_rationale' trains on rationales, which only a "
                            "built-in task's oracle writes; choose a template without rationale")

    class Task:
        @staticmethod
        def rationale(prompt, answer, name):
            return f"<{answer} under {name}>"
    got = judgment_data(pref_rows(1), TEMPLATES["compact_rationale"], Run(tok=None, task=Task()))
    assert got[0]["response"].endswith("\nEvaluation of Response B: <no under correct>")


def test_principles_of_prefers_the_judge_checkpoint_over_the_start(tmp_path):
    import train
    from nanoalign.judge import TEMPLATES
    from nanoalign.onpolicy import PRINCIPLES_FILE, principles_of
    t = TEMPLATES["compact_principle"]
    start, judge = tmp_path / "start", tmp_path / "judge"
    start.mkdir(), judge.mkdir()
    (start / PRINCIPLES_FILE).write_text(json.dumps({"a": "from the start"}))
    (judge / PRINCIPLES_FILE).write_text(json.dumps({"b": "from the judge", "c": "too"}))
    cfg = train.make_config(method="self_judge", init_from=str(start))
    assert principles_of(cfg, t) == [("a", "from the start")]
    cfg = train.make_config(method="self_judge", init_from=str(start), judge_from=str(judge))
    assert principles_of(cfg, t) == [("b", "from the judge"), ("c", "too")]
    cfg = train.make_config(method="self_judge", init_from=str(tmp_path), judge_from=str(tmp_path / "x"))
    from nanoalign.judge import JudgeError
    with pytest.raises(JudgeError) as e:
        principles_of(cfg, t)
    path = tmp_path / "x" / PRINCIPLES_FILE
    assert str(e.value) == (f"judge template 'compact_principle' judges under principles: name them "
                            f"with --principles name:description,... ({path} does not exist)")


def test_on_policy_batches_are_built_on_the_callers_device(monkeypatch):
    """The device a method names (its model's) is the device make_batch builds the batch on."""
    from nanoalign import onpolicy
    seen = []

    def make_batch(examples, kind, pad_id, device="cpu", packed=False, _real=onpolicy.make_batch):
        seen.append((kind, device))
        return _real(examples, kind, pad_id)
    monkeypatch.setattr(onpolicy, "make_batch", make_batch)
    gpu = torch.device("cuda", 3)
    onpolicy.response_batch([[5, 6], [7]], [[8, 9, 2], [10, 2]], 0, gpu)
    onpolicy.pair_batch([[5, 6], [7]], [[8, 2], [9, 2]], [[10, 2], [11, 12, 2]], 0, gpu)
    assert seen == [("sft", gpu), ("pref", gpu)]


@pytest.mark.parametrize("method, opts", [
    ("self_judge", {}), ("self_judge_offpolicy", {}), ("osp", {"pairing": "ranked", "osp_k": 3}),
    ("osp", {"pairing": "raft", "osp_k": 3}), ("osp", {"pairing": "random", "osp_k": 4}),
])
def test_on_policy_methods_judge_under_the_runs_principles(method, opts, monkeypatch):
    from nanoalign import REGISTRY
    from nanoalign.common import Run
    from tests.helpers import method_config
    tok, policy, ref, _, batch = offpolicy_setup()
    calls = judge_by_rule(monkeypatch, by_score)
    principles = [("correct", "the sum is right"), ("format", "ends with a period")]
    run = Run(tok=tok, ref=ref)
    run.principles = principles
    method_step(REGISTRY[method], policy, batch, run, method_config(method, gen_max_tokens=3, **opts))
    assert calls and all(p == principles for _, _, p in calls)
    assert all(j is ref for j, _, _ in calls)


def test_orient_breaks_a_tie_for_the_first():
    from nanoalign.onpolicy import orient
    assert orient(["a", "b", "c"], ["x", "y", "z"], [0.5, 0.4999, 0.5001]) == (["a", "y", "c"], ["x", "b", "z"])


# -- the judge's agreement with the task's oracle (a metric only) ---------------------------------
def test_agreement_skips_prompts_outside_the_task():
    """A prompt the task cannot read is skipped, and the pairs after it still count: here one pair
    the oracle ranks ('4.' is right, '5.' wrong), which the judge (p = 0.9: the first) gets right."""
    assert onpolicy.agreement(task, ["not a task prompt", "What is 2 + 2?"], ["x", "4."], ["y", "5."],
                              [0.9, 0.9]) == {"judge_agree": 1.0, "judge_pairs": 1.0}


def test_agreement_counts_p_one_half_as_choosing_a():
    """p = 1/2 is the judge choosing the first response, as orient pairs it (a judge that always
    reads position A gets exactly 1/2 from the position swap): here the first is the right '4.'."""
    assert onpolicy.agreement(task, [X], ["4."], ["5."], [0.5]) == {"judge_agree": 1.0, "judge_pairs": 1.0}


ANSWERS = ["4.", "4", "5.", "The sum is 4.", "x"]


@settings(max_examples=examples(15))
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5), st.integers(0, 5), st.sampled_from(ANSWERS),
                          st.sampled_from(ANSWERS), st.sampled_from([0.1, 0.5, 0.9])), max_size=6))
def test_agreement_is_the_judges_hit_rate_on_the_pairs_the_oracle_ranks(pairs):
    """judge_agree: over the pairs of the task's own prompts whose responses the oracle scores
    differently, the fraction where the judge's choice (p >= 1/2: the first) is the oracle's better
    one; {} without such a pair, or without a task."""
    prompts = [f"What is {i} + {j}?" if ours else f"Tell me about {i} and {j}." for ours, i, j, *_ in pairs]
    a, b, p = [r[3] for r in pairs], [r[4] for r in pairs], [r[5] for r in pairs]
    hits = []
    for x, (ours, _, _, ya, yb, q) in zip(prompts, pairs):
        if ours:
            sa, sb = task.oracle_scores(x, ya)["overall"], task.oracle_scores(x, yb)["overall"]
            if sa != sb:
                hits.append((sa > sb) == (q >= 0.5))
    want = {"judge_agree": sum(hits) / len(hits), "judge_pairs": len(hits)} if hits else {}
    assert onpolicy.agreement(task, prompts, a, b, p) == pytest.approx(want)
    assert onpolicy.agreement(None, prompts, a, b, p) == {}


@pytest.mark.parametrize("method, opts", [
    ("self_judge", {}), ("self_judge_offpolicy", {}), ("osp", {"osp_k": 3}),
    ("osp", {"pairing": "raft", "osp_k": 3}),
])
def test_on_policy_updates_run_padding_free_under_packed(method, opts, monkeypatch):
    """--packed true: the batch a rollout hands the loss is made padding-free as every other
    method's micro-batch is (train.py makes those; a rollout makes its own), with the same loss as
    the padded batch. The rollout once built its pairs padded whatever --packed said."""
    from nanoalign import REGISTRY
    from tests.helpers import method_config
    tok, policy, ref, _, batch = offpolicy_setup()
    judge_by_rule(monkeypatch, by_score)
    got = {}
    for packed in ("false", "true"):
        cfg, run = method_config(method, gen_max_tokens=3, packed=packed, **opts), Run(tok=tok, ref=ref)
        torch.manual_seed(0)                                  # the same samples both times
        with torch.no_grad():
            b, _ = REGISTRY[method].rollout(policy, batch, run, cfg)
        assert ("packed" in b) == (packed == "true")
        got[packed] = REGISTRY[method].loss(policy, b, run, cfg)[0].item()
    assert got["true"] == pytest.approx(got["false"], rel=1e-5, abs=1e-6)


# -- a run from a trained judge judges as it trained, and says when a flag overrides that ----------
def test_the_line_a_run_starts_with_says_how_it_judges_and_whose_that_is(tmp_path):
    from types import SimpleNamespace
    judge_dir = tmp_path / "jsft"
    judge_dir.mkdir()
    (judge_dir / "state.json").write_text(json.dumps({"step": 2, "config": {
        "method": "jsft", "judge_template": "hh", "likelihood": "pair"}}))

    def said(src, template, rule):
        return onpolicy.judging_said(SimpleNamespace(judge_from="", init_from=str(src), judge_template=template,
                                                     likelihood=rule))
    assert said(judge_dir, "hh", "pair") == f"judges with --judge_template hh --likelihood pair, as the judge " \
                                            f"{judge_dir} records"
    # a judge that records no template (an SFT warm-up, a downloaded model), or a JSFT run that
    # trained no judgments, is said to judge zero-shot if it never trained to judge
    zero_shot = (": a model that never trained to judge (an SFT warm-up, a downloaded model) judges "
                 "zero-shot, near chance for a small one; train a judge with --method jsft (Self-Judge) "
                 "or pref_aug (OSP) and start from it")
    assert said(tmp_path / "none", "compact", "vocab") == (
        f"judges with --judge_template compact --likelihood vocab\nnote: the judge {tmp_path / 'none'} "
        f"records no judge template (a jsft or pref_aug run's checkpoint does)" + zero_shot)
    no_judgments = tmp_path / "sft_chosen"
    no_judgments.mkdir()
    (no_judgments / "state.json").write_text(json.dumps({"step": 2, "config": {
        "method": "jsft", "jsft_judge": False, "judge_template": "hh", "likelihood": "pair"}}))
    assert said(no_judgments, "hh", "pair") == (
        f"judges with --judge_template hh --likelihood pair, as the judge {no_judgments} records\nnote: "
        f"the judge {no_judgments} is a jsft run that trained no judgments (its config, in state.json)"
        + zero_shot)
    assert said(judge_dir, "compact", "vocab") == (
        f"note: the judge {judge_dir} records --judge_template hh --likelihood pair (its state.json); this run "
        f"judges with --judge_template compact --likelihood vocab, as given")
    assert said(judge_dir, "hh", "vocab") == (
        f"note: the judge {judge_dir} records --likelihood pair (its state.json); this run judges with "
        f"--likelihood vocab, as given")
    assert onpolicy.judging_overridden(str(judge_dir), {"judge_template": "hh", "likelihood": "pair"},
                                       {"judge_template": "hh", "likelihood": "pair"}) is None


@pytest.mark.parametrize("method, opts, rule, other", [("self_judge", [], "vocab", "pair"),
                                                       ("osp", ["--osp_k", "2"], "pair", "vocab")])
def test_a_run_from_a_jsft_checkpoint_judges_as_it_trained_and_notes_a_flag_that_overrides_it(
        method, opts, rule, other, tmp_path, monkeypatch, capsys):
    """The JSFT start records the template its judge trained on and the rule to judge by (its
    state.json): the run's judge is asked with those, and the run saves them; a flag that gives
    another is obeyed, with one line saying what the judge trained with. The run asked in 'compact',
    a template its judge had never seen, and said nothing."""
    from model.checkpoint import save_model
    from model.model import Transformer, config_from_preset
    start = tmp_path / "jsft"
    torch.manual_seed(0)
    save_model(Transformer(config_from_preset("tiny")), str(start), task.build_tokenizer())
    (start / "state.json").write_text(json.dumps({"step": 2, "config": {
        "method": "jsft", "judge_template": "hh", "likelihood": other}}))
    asked = []

    def stub(j, tok, t, prompts, a, b, principles=None, likelihood=None, combine=None):
        asked.append((t.name, likelihood))
        return torch.full((len(prompts),), 0.6)
    monkeypatch.setattr(onpolicy, "judge_probs", stub)
    argv = ["--method", method, "--init_from", str(start), "--max_steps", "1", "--n_train", "4",
            "--batch_size", "2", "--gen_max_tokens", "2", "--final_eval", "false"] + opts

    def run(name, *flags):
        asked.clear()
        train.main(argv + ["--out_dir", str(tmp_path / name), *flags])
        saved = json.loads((tmp_path / name / "ckpt" / "state.json").read_text())["config"]
        notes = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("note:") and "judge" in ln]
        return set(asked), (saved["judge_template"], saved["likelihood"]), notes
    got, saved, notes = run("own")
    assert got == {("hh", other)} and saved == ("hh", other) and notes == []
    got, saved, notes = run("told", "--judge_template", "compact", "--likelihood", rule)
    assert got == {("compact", rule)} and saved == ("compact", rule)
    assert len(notes) == 1 and str(start) in notes[0], notes
    assert "--judge_template hh" in notes[0] and f"--likelihood {other}" in notes[0], notes
