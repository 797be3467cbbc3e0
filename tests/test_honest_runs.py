"""Faithful judging and honest runs (issue #21): principle-aware judging by JM-PR, a judge of its own,
judges in eval mode, truncation that never cuts a label, multi-turn judge prompts, clear errors,
resume that cannot mix runs, own data evaluated on its own, a log that explains itself."""
import json
import os
import shutil
import string

import pytest
import torch
from hypothesis import given, settings, strategies as st

import train
from experiments import task
from model.lora import apply_lora
from nanoalign import REGISTRY, judge, onpolicy
from nanoalign.common import Run
from nanoalign.data import DataError, read_jsonl, tokenize_rows
from tests.helpers import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
PRINCIPLES = [("correct", "the sum is right"), ("concise", "short"), ("format", "ends with a period")]


# -- 1. principle-aware judging: JM-PR ----------------------------------------------------------------
def jm_pr_by_hand(ps):
    """The rule as the Self-Judge paper states it, for one pair: prefer a when it wins under more than
    half of the principles; on an even split, when its mean probability is >= 1/2."""
    wins = sum(1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0 for p in ps)
    if wins * 2 != len(ps):
        return wins * 2 > len(ps)
    return sum(ps) / len(ps) >= 0.5


@given(st.lists(st.lists(st.sampled_from([0.1, 0.3, 0.5, 0.6, 0.9, 0.99]), min_size=1, max_size=5),
                min_size=1, max_size=6))
def test_jm_pr_decides_by_win_rate_then_mean_likelihood(cols):
    K = len(cols[0])
    cols = [c[:K] + [0.5] * (K - len(c)) for c in cols]                  # (N pairs, K principles)
    P = torch.tensor(cols, dtype=torch.float64).T                        # (K, N)
    p = judge.jm_pr(P)
    for i, col in enumerate(cols):
        assert bool(p[i] >= 0.5) == jm_pr_by_hand(col), (col, float(p[i]))


def test_jm_pr_breaks_an_even_split_by_mean_likelihood():
    # two principles each way: a wins under 2, b under 2; the mean probability decides
    P = torch.tensor([[0.9, 0.6], [0.8, 0.55], [0.4, 0.1], [0.45, 0.2]])   # (K=4, N=2)
    p = judge.jm_pr(P)
    assert p[0] >= 0.5 and p[1] < 0.5        # means 0.6375 and 0.3625


def test_on_policy_judging_runs_once_per_principle_and_never_renders_a_missing_one(monkeypatch):
    seen = []

    def stub(model, tok, t, items, likelihood="vocab", batch_size=64):
        for it in items:
            assert len(it) == 5 and it[3], "a principle template item without its principle"
            msgs, _ = judge.render(t, *it)
            assert "None" not in msgs[-1]["content"]
            seen.append(it[3])
        # a prefers under 'correct' only; b under the other two: JM-PR picks b
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


def test_an_on_policy_run_keeps_the_principles_it_judged_under(tmp_path):
    run = Run(tok=task.build_tokenizer())
    cfg = train.make_config(method="self_judge", judge_template="compact_principle",
                            principles="honesty:tells the truth,brevity:is short")
    onpolicy.prompt_rows([{"prompt": "q"}], cfg, "train", run)
    assert run.keep == {onpolicy.PRINCIPLES_FILE: {"honesty": "tells the truth", "brevity": "is short"}}
    run = Run(tok=task.build_tokenizer())
    onpolicy.prompt_rows([{"prompt": "q"}], train.make_config(method="osp"), "train", run)
    assert run.keep == {}                                # a plain template judges under none


@pytest.mark.parametrize("name, opts, rule", [
    ("self_judge", {}, ("vocab", "jm_pr")),
    ("self_judge_offpolicy", {}, ("vocab", "jm_pr")),
    ("osp", {"osp_k": 2}, ("pair", "mean")),
    ("osp", {"osp_k": 2, "pairing": "raft"}, ("pair", "mean")),
    ("self_judge", {"likelihood": "pair"}, ("pair", "jm_pr")),
    ("osp", {"osp_k": 2, "likelihood": "vocab"}, ("vocab", "mean")),
])
def test_each_method_judges_by_its_papers_rule_unless_told_otherwise(name, opts, rule, monkeypatch):
    """Self-Judge: full-vocabulary likelihoods, principles by JM-PR; OSP: the two-label softmax,
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
    REGISTRY[name].loss(tiny(0, vocab_size=264), batch, Run(tok=tok, ref=tiny(1, vocab_size=264)), cfg)
    assert asked and set(asked) == {rule}


# -- 2. a judge of its own -------------------------------------------------------------------------------
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
        REGISTRY[name].loss(policy, batch, Run(tok=tok, ref=ref, judge=other), cfg)
        assert used and all(j is other for j in used), name
        used.clear()
        REGISTRY[name].loss(policy, batch, Run(tok=tok, ref=ref), cfg)
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
    REGISTRY[name].loss(policy, batch, Run(tok=tok, ref=ref, judge=jm, judge_tok=jtok), cfg)
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
    tok, rows = task.build_tokenizer(), [{"prompt": "q"}]
    bare = char_tokenizer()
    bare.template = None                                 # a checkpoint with no template of its own
    with pytest.raises(CheckpointError, match="no chat template"):
        onpolicy.prompt_rows(rows, train.make_config(method="self_judge"), "train", Run(tok=tok, judge_tok=bare))
    strict = char_tokenizer()                            # a template that refuses system messages
    strict.template = ChatTemplate("{% for m in messages %}{% if m['role'] == 'system' %}"
                                   "{{ raise_exception('no system messages') }}{% endif %}"
                                   "{{ m['content'] }}{% endfor %}", "strict template")
    cfg = train.make_config(method="self_judge", judge_template="compact_principle", principles="a:b")
    with pytest.raises(judge.JudgeError, match="'compact_principle': the chat template cannot render it"):
        onpolicy.prompt_rows(rows, cfg, "train", Run(tok=tok, judge_tok=strict))


def test_train_judges_with_the_judge_from_checkpoints_own_tokenizer(tmp_path):
    from model.checkpoint import save_model
    from tests.test_train import run_cfg
    jtok = char_tokenizer()
    save_model(tiny(2, vocab_size=jtok.vocab_size, max_seq_len=512), str(tmp_path / "judge"), jtok)
    cfg = run_cfg(tmp_path, method="self_judge", judge_from=str(tmp_path / "judge"), max_steps=1,
                  grad_accum=1, val_data="", gen_max_tokens=3)
    train.train(cfg)                  # the policy's byte ids would be out of this judge's vocabulary
    rec = json.loads(open(tmp_path / "run" / "metrics.jsonl").readline())
    assert rec["step"] == 1 and rec["t_judge"] > 0


# -- 3. judges score in eval mode -------------------------------------------------------------------------
def test_a_lora_judge_with_dropout_gives_the_same_probabilities_twice():
    tok = task.build_tokenizer()
    model = tiny(0, vocab_size=264, max_seq_len=256)
    apply_lora(model, 4, 8.0, dropout=0.5)
    for m in model.modules():                  # non-zero adapters, so dropout would change the output
        if hasattr(m, "B"):
            torch.nn.init.normal_(m.B, std=0.5)
    model.train()
    items = [("What is 1 + 2?", "3.", "4"), ("What is 5 + 5?", "10", "The sum is 10.")]
    t = judge.TEMPLATES["compact"]
    p1, p2 = judge.swapped_probs(model, tok, t, items), judge.swapped_probs(model, tok, t, items)
    assert torch.equal(p1, p2)
    assert model.training                      # the mode is restored


# -- 4. truncation never cuts a label ----------------------------------------------------------------------
@settings(max_examples=15, deadline=None)
@given(st.integers(40, 140))
def test_judgment_targets_are_dropped_whole_never_cut(max_length):
    tok = task.build_tokenizer()
    rows = task.preference_rows(6, 0)
    jrows = judge.judgment_rows(rows, judge.TEMPLATES["compact"])
    ex, dropped = tokenize_rows(jrows, tok, "sft", max_length, skip_bad=True)
    assert len(ex) + dropped == len(jrows)
    for e in ex:
        resp = tok.decode(e["ids"][e["n_prompt"]:])
        assert resp.startswith("Better: ") and resp.rstrip()[-1] in "AB"   # the label is there


# -- 5. OSP's beta says why ---------------------------------------------------------------------------------
def test_osp_beta_help_states_the_default_and_the_papers_values(capsys):
    with pytest.raises(SystemExit):
        train.parse_config(["--method", "osp", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "0.001 (dialogue)" in out and "0.02 (summaries)" in out and "(default: 0.1)" in out


# -- 6. multi-turn prompts keep their roles ------------------------------------------------------------------
def test_judge_prompts_show_multi_turn_roles():
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "What is 1 + 1?"}]
    msgs, _ = judge.render(judge.TEMPLATES["compact"], conv, "2", "3")
    text = msgs[-1]["content"]
    assert "User: Hi\nAssistant: Hello!\nUser: What is 1 + 1?" in text
    msgs, _ = judge.render(judge.TEMPLATES["compact"], [conv[-1]], "2", "3")
    assert "User:" not in msgs[-1]["content"]      # a single user turn is just its text


def test_the_hh_template_writes_one_role_name_per_turn():
    """Table 14's context: 'User: ...' / 'Assistant: ...' lines, one role name per turn."""
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "What is 1 + 1?"}]
    t = judge.TEMPLATES["hh"]
    text = judge.render(t, conv, "2", "3")[0][-1]["content"]
    assert "Context:\n-------\nUser: Hi\nAssistant: Hello!\nUser: What is 1 + 1?\n-------\n" in text
    for one in ("What is 1 + 1?", conv[-1:]):
        text = judge.render(t, one, "2", "3")[0][-1]["content"]
        assert "Context:\n-------\nUser: What is 1 + 1?\n-------\nAssistant A: 2\n" in text
        assert text.count("User:") == 1


# -- 7. clear errors instead of tracebacks --------------------------------------------------------------------
def test_a_chosen_conversation_without_an_assistant_turn_names_the_row(tmp_path):
    f = tmp_path / "p.jsonl"
    good = {"prompt": "q", "chosen": "a", "rejected": "b"}
    bad = {"prompt": "q", "chosen": [{"role": "user", "content": "q"}], "rejected": "b"}
    f.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=rf"{f}:2: field 'chosen' is a message list with no assistant"):
        read_jsonl(str(f), "pref")
    rows, skipped = read_jsonl(str(f), "pref", skip_bad=True)
    assert len(rows) == 1 and skipped == 1


def _short_run(tmp_path, capsys, **kw):
    argv = ["--method", "sft", "--init_from", "scratch", "--max_steps", "2", "--batch_size", "4",
            "--n_train", "16", "--out_dir", str(tmp_path / "run"), "--final_eval", "false",
            "--log_every", "1"]
    for k, v in kw.items():
        argv += [f"--{k}", str(v)]
    train.main(argv)
    return capsys.readouterr().out


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_resume_from_a_damaged_train_state_is_one_clear_line(tmp_path, capsys, damage):
    _short_run(tmp_path, capsys)
    f = tmp_path / "run" / "ckpt" / "train_state.safetensors"
    if damage == "missing":
        f.unlink()
    else:
        f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(SystemExit) as e:
        train.main(["--method", "sft", "--out_dir", str(tmp_path / "run"), "--resume", "--max_steps", "4"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "train_state.safetensors" in err and "Traceback" not in err
    assert ("missing" in err) == (damage == "missing")


# -- 8. resume cannot mix runs; no argument prefixes ---------------------------------------------------------
def test_resume_refuses_another_method_or_a_changed_setting(tmp_path, capsys):
    _short_run(tmp_path, capsys)
    run = str(tmp_path / "run")
    with pytest.raises(SystemExit) as e:
        train.parse_config(["--method", "orpo", "--out_dir", run, "--resume"])
    assert e.value.code == 2 and "'method' was 'sft'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.parse_config(["--method", "sft", "--out_dir", run, "--resume", "--lr", "0.1"])
    err = capsys.readouterr().err
    assert "'lr' was 0.0003" in err and "got 0.1" in err and "max_steps" in err
    cfg = train.parse_config(["--method", "sft", "--out_dir", run, "--resume", "--max_steps", "5"])
    assert cfg.max_steps == 5 and cfg.n_train == 16          # allowed, and the rest is the run's
    cfg = train.parse_config(["--out_dir", run, "--resume"])   # the method comes from the run
    assert cfg.method == "sft"


def test_argument_prefixes_are_refused(capsys):
    with pytest.raises(SystemExit):
        train.parse_config(["--max_step", "5"])
    assert "unrecognized arguments: --max_step" in capsys.readouterr().err


# -- 9. own data is evaluated on its own ------------------------------------------------------------------
def test_own_data_runs_no_builtin_evaluation_and_validates_at_the_end(tmp_path, capsys):
    out = _short_run(tmp_path, capsys, train_data=os.path.join(FIX, "sft.jsonl"), batch_size=2,
                     final_eval="true", eval_every=100, val_data=os.path.join(FIX, "sft.jsonl"))
    assert "Built-in task" not in out and "What is 7 + 5" not in out
    recs = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["step"] for r in recs if r["split"] == "val"] == [2]
    shutil.rmtree(tmp_path / "run")
    out = _short_run(tmp_path, capsys, train_data=os.path.join(FIX, "sft.jsonl"), batch_size=2)
    recs = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl")]
    assert not [r for r in recs if r["split"] == "val"]       # 'auto': no built-in validation


def test_compare_judges_each_run_as_the_run_judges(tmp_path, monkeypatch):
    """experiments/compare.py's judge_acc and bestN use the run's own template, likelihood rule and
    principles, not a fixed 'compact' template."""
    from experiments import compare
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / onpolicy.PRINCIPLES_FILE).write_text(json.dumps(dict(PRINCIPLES[:2])))
    cfg = train.make_config(method="self_judge", judge_template="compact_principle", out_dir=str(tmp_path))
    j = compare.judging(cfg)
    assert (j["t"].name, j["principles"], j["likelihood"], j["combine"]) == \
        ("compact_principle", PRINCIPLES[:2], "vocab", "jm_pr")
    cfg = train.make_config(method="osp", judge_template="compact_principle", principles="a:b",
                            out_dir=str(tmp_path))
    j = compare.judging(cfg)
    assert (j["principles"], j["likelihood"], j["combine"]) == ([("a", "b")], "pair", "mean")
    j = compare.judging(train.make_config(method="orpo"))
    assert (j["t"].name, j["principles"], j["likelihood"]) == ("compact", None, "vocab")
    seen = []

    def spy(model, tok, t, items, principles=None, batch_size=64, likelihood="vocab", combine="jm_pr"):
        seen.append((t.name, principles, likelihood, combine))
        return torch.ones(len(items))
    monkeypatch.setattr(compare, "judge_pairs", spy)
    assert compare.label_judge_accuracy(None, None, cfg, n=4) == 1.0
    assert seen == [("compact_principle", [("a", "b")], "pair", "mean")]


# -- 10. the log explains itself ------------------------------------------------------------------------------
def test_the_log_has_a_legend_and_ends_with_where_and_how_to_sample(tmp_path, capsys):
    out = _short_run(tmp_path, capsys)
    assert "metrics: loss = " in out and "nll_per_token = " in out
    ckpt = os.path.join(str(tmp_path / "run"), "ckpt")
    assert f"checkpoint: {ckpt}" in out and f"python sample.py --init_from {ckpt}" in out


def test_a_stopped_run_prints_the_command_that_resumes_it(tmp_path, capsys):
    cfg = train.make_config(method="sft", init_from="scratch", max_steps=4, batch_size=4, n_train=16,
                            out_dir=str(tmp_path / "run"), final_eval=False)
    train.train(cfg, stop_at=1)
    out = capsys.readouterr().out
    assert f"python train.py --method sft --out_dir {tmp_path / 'run'} --resume" in out


def test_another_methods_option_is_refused_not_dropped(tmp_path, capsys):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"method": "self_judge_offpolicy", "judge": "policy"}))
    with pytest.raises(SystemExit) as e:
        train.parse_config(["--config", str(p)])
    assert e.value.code == 2 and "'judge' is not an option of --method self_judge_offpolicy" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit, match="'w1' is not an option of --method orpo"):
        train.make_config(method="orpo", w1=0.5)
