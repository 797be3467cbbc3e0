"""Self-Judge (nanoalign/self_judge.py): the on-policy and off-policy losses are DPO on pairs oriented
by the judge; the off-policy samples are seeded per prompt and cached; the step judges with the chosen
model and logs its cost; JSFT trains on the chosen responses and the judgments, and keeps its
principles with the checkpoint."""
import json

import pytest
import torch
from hypothesis import given, settings, strategies as st

import train
from nanoalign import onpolicy
from nanoalign.tasks import arith as task
from tests.helpers import (PROMPTS, OracleTask, assert_metrics, call_method, close, examples, judge_by_rule,
                           log_sigmoid, longer_rule, mean, method_step, offpolicy_setup, on_policy_setup,
                           pair_h, pref_rows, record_on_policy)


# -- DPO on pairs oriented by the judge ------------------------------------------------------------
def dpo_from_pairs(policy, ref, prompts, wins, losses, beta):
    hs = [pair_h(policy, ref, p, w, lo) for p, w, lo in zip(prompts, wins, losses)]
    return sum(-log_sigmoid(beta * h) for h in hs), hs


@settings(max_examples=examples(6))
@pytest.mark.parametrize("method", ["self_judge", "self_judge_offpolicy"])
@given(seed=st.integers(0, 10_000), n=st.integers(1, 3), beta=st.floats(0.05, 1.0),
       judge=st.sampled_from(["ref", "policy"]))
def test_self_judge_is_dpo_on_pairs_oriented_by_the_judge(method, seed, n, beta, judge):
    tok, policy, ref, batch = on_policy_setup(seed, n)
    with pytest.MonkeyPatch.context() as mp:
        calls = judge_by_rule(mp, longer_rule)
        rec = record_on_policy(mp)
        torch.manual_seed(seed)
        opts = {"judge": judge} if method == "self_judge" else {}     # off-policy: pi_ref judges
        loss, m = call_method(method, policy, batch, tok=tok, ref=ref, beta=beta, gen_max_tokens=6,
                              **opts)
    prompts = batch["prompts"]
    # the samples: one call for all prompts (on-policy), or one per prompt (off-policy, from pi_ref)
    samples = rec.samples[0] if method == "self_judge" else [r[0] for r in rec.samples]
    assert len(samples) == n and all(len(s) == 2 for s in samples)
    texts = [[tok.decode(y) for y in s] for s in samples]
    # the judge was asked about (x, y1, y2) of every prompt, and it was the right model
    (judge_model, items, _), = calls
    assert items == [(x, t[0], t[1]) for x, t in zip(PROMPTS, texts)]
    assert judge_model is (policy if judge == "policy" and method == "self_judge" else ref)
    # the pair trained on: winner = the sample the judge prefers (p(y1 > y2) >= 1/2 -> y1)
    first = [longer_rule(x, t[0], t[1]) >= 0.5 for x, t in zip(PROMPTS, texts)]
    wins = [s[0] if f else s[1] for s, f in zip(samples, first)]
    losses = [s[1] if f else s[0] for s, f in zip(samples, first)]
    assert rec.pairs[-1] == (prompts, wins, losses)
    want, hs = dpo_from_pairs(policy, ref, prompts, wins, losses, beta)
    assert close(loss.item(), want)
    assert_metrics(m, {"margin": mean([beta * h for h in hs])})
    if all(abs(h) > 1e-3 for h in hs):
        assert_metrics(m, {"reward_acc": mean([float(h > 0) for h in hs])})


# -- JSFT keeps its principles with the checkpoint -------------------------------------------------
def test_principle_aware_jsft_keeps_its_principles_with_the_checkpoint(tmp_path):
    cfg = train.make_config(method="jsft", init_from="scratch", judge_template="compact_principle",
                            out_dir=str(tmp_path), max_steps=1, batch_size=4, n_train=8,
                            final_eval=False, val_data="", max_length=384)
    train.train(cfg)
    kept = json.load(open(tmp_path / "ckpt" / onpolicy.PRINCIPLES_FILE))
    assert kept == task.OBJECTIVES


def test_principles_come_from_the_training_split_and_travel_with_derived_checkpoints(tmp_path):
    """JSFT keeps its TRAINING split's principles (a validation file of other objectives does not
    replace them), and a run started from a principle-aware checkpoint keeps them in its own."""
    def rows(objs):
        return "".join(json.dumps({"prompt": f"What is {i} + 1?", "chosen": f"{i + 1}.", "rejected": "no",
                                   "labels": {k: "1" for k in objs}, "objectives": objs}) + "\n"
                       for i in range(8))
    (tmp_path / "train.jsonl").write_text(rows({"correct": "the sum is right"}))
    (tmp_path / "val.jsonl").write_text(rows({"polite": "says please"}))
    common = dict(init_from="scratch", max_steps=1, batch_size=4, final_eval=False, max_length=384)
    train.train(train.make_config(method="jsft", judge_template="compact_principle",
                                  train_data=str(tmp_path / "train.jsonl"),
                                  val_data=str(tmp_path / "val.jsonl"), out_dir=str(tmp_path / "jsft"),
                                  **common))
    kept = tmp_path / "jsft" / "ckpt" / onpolicy.PRINCIPLES_FILE
    assert json.load(open(kept)) == {"correct": "the sum is right"}
    train.train(train.make_config(method="sft", out_dir=str(tmp_path / "sft"), val_data="", n_train=8,
                                  **{**common, "init_from": str(tmp_path / "jsft" / "ckpt")}))
    kept = tmp_path / "sft" / "ckpt" / onpolicy.PRINCIPLES_FILE
    assert json.load(open(kept)) == {"correct": "the sum is right"}


# -- JSFT rows; the off-policy samples, cache and metrics; who judges ------------------------------
def test_jsft_rows_are_the_chosen_responses_then_the_judgments():
    import train
    from nanoalign.common import Run
    from nanoalign.judge import TEMPLATES, judgment_rows
    from nanoalign.self_judge import jsft_rows
    from tests.helpers import byte_tokenizer
    rows = pref_rows(3)
    del rows[2]["_where"]
    sft = [{"prompt": r["prompt"], "response": r["chosen"], "_where": w}
           for r, w in zip(rows, ["f:1", "f:2", "row"])]
    cfg = train.make_config(method="jsft")
    assert jsft_rows(rows, cfg, "train", Run(tok=byte_tokenizer())) == sft + judgment_rows(rows, TEMPLATES["compact"])
    cfg = train.make_config(method="jsft", jsft_judge=False)
    assert jsft_rows(rows, cfg, "train", Run(tok=byte_tokenizer())) == sft


def test_offpolicy_samples_each_prompt_with_a_generator_seeded_by_seed_and_prompt(monkeypatch):
    from nanoalign import onpolicy
    from tests.helpers import call_method, judge_by_rule
    tok, policy, ref, _, batch = offpolicy_setup()     # the byte tokenizer, two models, two prompts
    judge_by_rule(monkeypatch, lambda x, a, b: 0.5)
    seeds, made, real_gen, real_sample = [], [], torch.Generator, onpolicy.sample

    def generator(*args, **kw):
        made.append(args + tuple(kw.values()))
        return real_gen(*args, **kw)

    def sample(model, tok, prompts, n, temperature, top_p, max_new_tokens, generator=None, top_k=None):
        seeds.append((tuple(prompts[0]), generator.initial_seed()))
        assert model is ref                                  # off-policy: drawn from pi_ref
        assert (n, temperature, top_p, max_new_tokens) == (2, 1.0, 0.9, 3)   # the paper's sampling
        return real_sample(model, tok, prompts, n, temperature, top_p, max_new_tokens, generator, top_k)
    monkeypatch.setattr(torch, "Generator", generator)
    monkeypatch.setattr(onpolicy, "sample", sample)
    runs = {}
    for seed in (1, 1, 2):
        seeds.clear()
        call_method("self_judge_offpolicy", policy, batch, tok=tok, ref=ref, seed=seed, gen_max_tokens=3)
        runs.setdefault(seed, []).append(dict(seeds))
    assert runs[1][0] == runs[1][1]                          # the same (seed, prompt): the same draws
    assert len(set(runs[1][0].values())) == 2               # two prompts: two generators
    assert not set(runs[1][0].values()) & set(runs[2][0].values())   # another seed: other draws
    assert made and all(m == (policy.lm_head.weight.device,) for m in made)   # on the model's device


def test_offpolicy_metrics_count_what_the_step_did(monkeypatch):
    from nanoalign import REGISTRY
    from nanoalign.common import Run
    from tests.helpers import judge_by_rule, method_config
    tok, policy, ref, other, batch = offpolicy_setup()
    calls = judge_by_rule(monkeypatch, lambda x, a, b: float(OracleTask.score(a) > OracleTask.score(b)))
    m, cfg = REGISTRY["self_judge_offpolicy"], method_config("self_judge_offpolicy", gen_max_tokens=3)

    def loss_fn(*a):
        return method_step(m, *a)
    run = Run(tok=tok, ref=ref, task=OracleTask())
    _, m1 = loss_fn(policy, batch, run, cfg)
    assert [j for j, *_ in calls] == [ref]                    # pi_ref judges, once, both prompts
    assert m1["cached_prompts"] == 2.0 and isinstance(m1["cached_prompts"], float)
    assert all(m1[k] >= 0 for k in ("t_sample", "t_judge"))
    assert abs(m1["samples_per_s"] * max(m1["t_sample"], 1e-9) - 4) < 1e-6     # 2 prompts x 2 samples
    assert m1["judge_agree"] == 1.0                          # the judge follows the oracle here
    _, m2 = loss_fn(policy, batch, run, cfg)                  # every prompt cached: nothing drawn
    assert len(calls) == 1 and m2["cached_prompts"] == 2.0
    assert "samples_per_s" not in m2 and "judge_agree" not in m2
    assert all(k in m2 for k in ("t_sample", "t_judge", "sample_len", "margin"))
    calls.clear()
    loss_fn(policy, batch, Run(tok=tok, ref=ref, judge=other), cfg)
    assert [j for j, *_ in calls] == [other]                  # --judge_from: that model judges


@pytest.mark.parametrize("who", ["ref", "policy", "judge_from"])
def test_self_judge_step_judges_with_the_chosen_model_and_logs_its_cost(who, monkeypatch):
    from nanoalign import REGISTRY, onpolicy
    from nanoalign.common import Run
    from tests.helpers import judge_by_rule, method_config
    tok, policy, ref, other, batch = offpolicy_setup()
    calls = judge_by_rule(monkeypatch, lambda x, a, b: float(OracleTask.score(a) > OracleTask.score(b)))
    drawn, real_sample = [], onpolicy.sample

    def sample(model, tok, prompts, n, temperature, top_p, max_new_tokens, generator=None, top_k=None):
        drawn.append((model, n, temperature, top_p, max_new_tokens, generator))
        return real_sample(model, tok, prompts, n, temperature, top_p, max_new_tokens, generator, top_k)
    devices, real_pairs = [], onpolicy.pair_batch

    def pair_batch(prompts, wins, losses, pad_id, device, packed=False):
        devices.append(device)
        return real_pairs(prompts, wins, losses, pad_id, device, packed)
    monkeypatch.setattr(onpolicy, "sample", sample)
    monkeypatch.setattr(onpolicy, "pair_batch", pair_batch)
    cfg = method_config("self_judge", gen_max_tokens=3, judge="policy" if who == "policy" else "ref")
    run = Run(tok=tok, ref=ref, task=OracleTask(), judge=other if who == "judge_from" else None)
    _, m = method_step(REGISTRY["self_judge"], policy, batch, run, cfg)
    assert drawn == [(policy, 2, 1.0, 0.9, 3, None)]         # on-policy, the paper's sampling
    assert devices == [policy.lm_head.weight.device]
    assert [j for j, *_ in calls] == [{"ref": ref, "policy": policy, "judge_from": other}[who]]
    assert all(m[k] >= 0 for k in ("t_sample", "t_judge"))
    assert abs(m["samples_per_s"] * max(m["t_sample"], 1e-9) - 4) < 1e-6      # 2 prompts x 2 samples
    assert m["judge_agree"] == 1.0


def test_a_judge_prompt_beyond_the_context_ends_the_run_with_one_line_naming_what_to_change(tmp_path, capsys):
    """The judge reads the prompt, both samples and its template: with 'ultrafeedback' on the tiny
    model's 512-byte context that overflows, and the run ended in a ValueError traceback from the
    model's forward, which named neither the judge nor what to change."""
    with pytest.raises(SystemExit) as e:
        train.main(["--method", "self_judge", "--init_from", "scratch", "--judge_template", "ultrafeedback",
                    "--max_steps", "1", "--n_train", "8", "--batch_size", "2", "--gen_max_tokens", "200",
                    "--val_data", "", "--final_eval", "false", "--out_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: judge template 'ultrafeedback': a judge prompt of ")
    assert "--gen_max_tokens" in err and "--max_length" in err and "'compact'" in err


def test_judge_policy_with_judge_from_is_refused_not_ignored(tmp_path, capsys):
    """--judge_from names the judge, so the policy never judged and the run said nothing of it. The
    rule is Self-Judge's (self_judge.one_judge), so every way a config is made refuses it: the
    flags, a --config file, and make_config, which once let it through (the check sat in the
    command line alone)."""
    from nanoalign.config import make_config
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"method": "self_judge", "judge": "policy", "judge_from": "judge_dir"}))
    for argv in (["--method", "self_judge", "--judge", "policy", "--judge_from", "judge_dir"],
                 ["--config", str(p)]):
        with pytest.raises(SystemExit) as e:
            train.parse_config(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and "--judge policy: --judge_from judge_dir judges instead of the policy" in err, err
    with pytest.raises(SystemExit, match="--judge policy: --judge_from j judges instead of the policy"):
        make_config(method="self_judge", judge="policy", judge_from="j")
    for ok, want in ((["--judge", "policy"], ("policy", "")), (["--judge_from", "j"], ("ref", "j")),
                     (["--judge", "ref", "--judge_from", "j"], ("ref", "j"))):
        cfg = train.parse_config(["--method", "self_judge"] + ok)
        assert (cfg.judge, cfg.judge_from) == want
    assert make_config(method="self_judge_offpolicy", judge_from="j").judge_from == "j"
