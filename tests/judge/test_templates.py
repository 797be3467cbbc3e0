"""The judge's templates (nanoalign/judge.py): how a judgment is asked (render, judge_ids, multi-turn
prompts, system messages for principles), how its answer is read (exactly one label, read off one
token), the judge's own training rows (judgment_rows: both orders, rationales, never cut), the
--principles parser, and a template that cannot work refused at start-up."""
import dataclasses
import re

import pytest
from hypothesis import example, given, strategies as st
from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

import train
from model.tokenizer import Tokenizer
from nanoalign import judge
from nanoalign.judge import TEMPLATES, JudgeError, JudgeTemplate, judgment_rows, label_ids
from nanoalign.tasks import arith as task
from tests.helpers import TOK, pref_rows, run_cfg


# -- a bad template fails at start-up; judgment rows, both orders ----------------------------------
def test_bad_template_fails_at_start_up(tmp_path, monkeypatch):
    bad = JudgeTemplate("bad", "{prompt} {a} {b}", "Better: {label}", ("First", "Second"))
    monkeypatch.setitem(judge.TEMPLATES, "bad", bad)
    cfg = dataclasses.replace(run_cfg(tmp_path, method="jsft"), judge_template="bad", max_length=256)
    with pytest.raises(JudgeError, match="'bad'"):
        train.train(cfg)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()     # before any step


def test_jsft_rows_both_orders_and_principles():
    rows = task.preference_rows(20, 0)
    plain = judgment_rows(rows, TEMPLATES["compact"])
    assert len(plain) == 2 * len(rows)
    for r, (j1, j2) in zip(rows, zip(plain[0::2], plain[1::2])):
        u1, u2 = j1["prompt"][-1]["content"], j2["prompt"][-1]["content"]
        assert u1.index(f"A: {r['chosen']}") < u1.index(f"B: {r['rejected']}") and j1["response"] == "Better: A"
        assert u2.index(f"A: {r['rejected']}") < u2.index(f"B: {r['chosen']}") and j2["response"] == "Better: B"
    pa = judgment_rows(rows, TEMPLATES["compact_rationale"], True, task.rationale)
    assert len(pa) == 2 * sum(lab != "equal" for r in rows for lab in r["labels"].values())
    for j in pa:
        obj = j["prompt"][-1]["content"].split("'")[1]
        assert j["prompt"][0] == {"role": "system", "content": task.OBJECTIVES[obj]}
        first, second = [ln.split(": ", 1)[1] for ln in j["prompt"][-1]["content"].split("\n")[2:4]]
        q = j["prompt"][-1]["content"].split("\n")[1][3:]
        s1, s2 = task.oracle_scores(q, first)[obj], task.oracle_scores(q, second)[obj]
        assert s1 != s2 and j["response"].split("\n")[0].endswith("A" if s1 > s2 else "B")
        assert task.rationale(q, first, obj) in j["response"]


def test_a_principle_label_written_as_a_number_judges_as_its_string(tmp_path):
    """JSON's 1 is "response 1 is better", as "1" is: once an integer label taught the judge the
    opposite (anything but the string "1" read as "rejected is better")."""
    import json
    from nanoalign.data import read_jsonl
    objs = {"correct": "the sum is right", "brief": "short"}
    for name, labels in (("num", {"correct": 1, "brief": 2}), ("str", {"correct": "1", "brief": "2"})):
        (tmp_path / f"{name}.jsonl").write_text(json.dumps(
            {"prompt": "What is 2 + 2?", "chosen": "4.", "rejected": "The answer is 5.",
             "labels": labels, "objectives": objs}) + "\n")
    from nanoalign.common import Run
    from nanoalign.onpolicy import judgment_data
    num, _ = read_jsonl(str(tmp_path / "num.jsonl"), "pref")
    txt, _ = read_jsonl(str(tmp_path / "str.jsonl"), "pref")
    t = TEMPLATES["compact_principle"]
    unsourced = lambda rows: [{k: v for k, v in r.items() if k != "_where"} for r in rows]  # noqa: E731
    got = unsourced(judgment_data(num, t, Run(tok=None)))     # (the two files' lines differ)
    assert got == unsourced(judgment_data(txt, t, Run(tok=None))) and len(got) == 4
    first = {j["prompt"][0]["content"]: j for j in got[0::2]}      # the better answer shown first
    assert "A: 4." in first["the sum is right"]["prompt"][-1]["content"]
    assert "A: The answer is 5." in first["short"]["prompt"][-1]["content"]
    assert all(j["response"].endswith("A") for j in got[0::2])
    assert all(j["response"].endswith("B") for j in got[1::2])


# -- multi-turn prompts keep their roles -----------------------------------------------------------
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


# -- --principles; judgment rows are never cut -----------------------------------------------------
def test_parse_principles_splits_names_from_descriptions():
    from nanoalign.judge import JudgeError, parse_principles
    assert parse_principles(" honesty : tells the truth ,, brevity:is: short,") == \
        [("honesty", "tells the truth"), ("brevity", "is: short")]
    assert parse_principles("") == []
    name_rule = ", a name being letters, digits, _ and -"
    for spec, bad, says in (("honesty,a:b", "honesty", ""), ("a:b,honesty:  ", "honesty:", ""),
                            (" :x,a:b", ":x", name_rule), ("my rule:x,a:b", "my rule:x", name_rule)):
        with pytest.raises(JudgeError) as e:
            parse_principles(spec, where="cfg.json")
        assert str(e.value) == f"cfg.json: '{bad}' must be name:description{says}"
    with pytest.raises(JudgeError, match=r"^--principles: 'x' must be"):
        parse_principles("x")


def test_principle_descriptions_may_hold_commas():
    """A comma starts the next principle only before a new 'name:' (the Self-Judge paper's own
    descriptions hold commas); 'e.g.' is no name, so 'e.g.: ...' stays in the description."""
    from nanoalign.judge import parse_principles
    helpful = "helpfulness:provide accurate, relevant, and up-to-date information"
    assert parse_principles(helpful) == \
        [("helpfulness", "provide accurate, relevant, and up-to-date information")]
    assert parse_principles("honesty:be honest, e.g.: hedge when unsure") == \
        [("honesty", "be honest, e.g.: hedge when unsure")]
    assert parse_principles(f"{helpful}, honesty :be honest, e.g.: hedge,harmless-2:no harm") == \
        [("helpfulness", "provide accurate, relevant, and up-to-date information"),
         ("honesty", "be honest, e.g.: hedge"), ("harmless-2", "no harm")]
    assert parse_principles("a:b,honesty") == [("a", "b,honesty")]      # no 'name:' after the comma


# a description may hold anything but a comma that looks like the start of the next entry (', name:')
# or one with nothing but spaces up to the next comma or the end (an empty entry, skipped)
ENTRY_START = re.compile(r",\s*[A-Za-z0-9_-]+\s*:|,\s*(,|$)")
names = st.from_regex(r"[A-Za-z0-9_-]+", fullmatch=True)
descriptions = st.text(alphabet="ab yz.,:;-_'0", min_size=1).map(str.strip).filter(
    lambda d: d and not ENTRY_START.search(d))


@given(st.lists(st.tuples(names, descriptions), min_size=1, max_size=5), st.sampled_from([",", ", "]))
@example([("helpfulness", "accurate, relevant, and up-to-date"), ("honesty", "be honest, e.g.: hedge")], ",")
def test_named_lists_round_trip(entries, sep):
    """Joined as 'name:description,name:description', every list reads back as it was, for
    --principles and --objectives alike (one parser)."""
    from nanoalign.judge import parse_principles
    from nanoalign.meta_aligner import parse_objectives
    spec = sep.join(f"{n}:{d}" for n, d in entries)
    assert parse_principles(spec) == entries
    assert parse_objectives(spec) == entries


def test_setup_checks_the_template_and_finds_the_principles(tmp_path):
    import train
    from nanoalign.common import Run
    from nanoalign.judge import JudgeError
    from nanoalign.onpolicy import setup
    from tests.helpers import byte_tokenizer
    run = Run(tok=byte_tokenizer())
    cfg = train.make_config(method="osp", judge_template="compact_principle", principles="a:b")
    setup(run, cfg, "cpu")
    assert run.principles == [("a", "b")]
    run = Run(tok=byte_tokenizer(), principles=[("x", "y")])
    setup(run, train.make_config(method="osp"), "cpu")
    assert run.principles is None

    class OneLabelTok:                                   # every text is one token: labels collide
        def encode(self, text):
            return [7]

        def decode(self, ids, skip_special=True):
            return "A"
    with pytest.raises(JudgeError, match="not single, distinct"):
        setup(Run(tok=OneLabelTok()), train.make_config(method="osp"), "cpu")


def test_judgment_rows_are_never_cut_and_rationales_follow_the_principle():
    from nanoalign.judge import TEMPLATES, judgment_rows
    seen = []

    def rationale(prompt, answer, name):
        seen.append((prompt, answer, name))
        return f"{answer}/{name}"
    rows = pref_rows(1)
    got = judgment_rows(rows, TEMPLATES["compact_rationale"], True, rationale)
    assert all(r["keep_whole"] is True for r in got) and len(got) == 2
    first = got[0]["response"]                              # better (chosen '1.') in position A
    assert first.endswith("\nEvaluation of Response A: 1./correct\nEvaluation of Response B: no/correct")
    assert got[1]["response"].endswith("\nEvaluation of Response A: no/correct\nEvaluation of Response B: 1./correct")
    assert all(s[0] == "What is 0 + 1?" for s in seen)
    assert all(r["keep_whole"] is True for r in judgment_rows(rows, TEMPLATES["compact"]))


# -- the prompt, and the label read off one token --------------------------------------------------
def test_the_judge_prompt_is_a_user_message_after_an_optional_system_message():
    """render: the question is a 'user' message; a principle template puts the description in a system
    message before it, an empty one when no description is given."""
    msgs, ans = judge.render(TEMPLATES["compact"], "q", "x", "y")
    assert msgs == [{"role": "user", "content": "Which response is better?\nQ: q\nA: x\nB: y\nChoose A or B."}]
    assert ans == "Better: {label}"
    t = TEMPLATES["compact_principle"]
    user = {"role": "user", "content": "Which response is better for 'c'?\nQ: q\nA: x\nB: y\nChoose A or B."}
    assert judge.render(t, "q", "x", "y", "c", "is correct")[0] == [
        {"role": "system", "content": "is correct"}, user]
    assert judge.render(t, "q", "x", "y", "c")[0] == [{"role": "system", "content": ""}, user]


def test_judge_ids_show_the_principle_and_its_description():
    """judge_ids: the principle's name in the question and answer, its description as system message."""
    t = TEMPLATES["compact_principle"]
    prefix, _ = label_ids(TOK, t)
    ids = judge.judge_ids(TOK, t, prefix, "q", "x", "y", "correct", "the sum is right")
    want = TOK.encode_prompt([
        {"role": "system", "content": "the sum is right"},
        {"role": "user", "content": "Which response is better for 'correct'?\nQ: q\nA: x\nB: y\nChoose A or B."},
    ]) + TOK.encode("Better for 'correct': ")
    assert ids == want


def test_an_answer_needs_exactly_one_label_and_the_error_names_the_template():
    with pytest.raises(JudgeError) as e:
        label_ids(TOK, JudgeTemplate("twice", "{prompt} {a} {b}", "{label} or {label}"))
    assert str(e.value) == "judge template 'twice': the answer must contain {label} exactly once"


def test_unreadable_labels_name_the_last_30_characters_before_the_label():
    """The error shows the 30 characters of the answer right before the label."""
    t = dataclasses.replace(TEMPLATES["ultrafeedback"], name="uf", labels=("First", "Second"))
    with pytest.raises(JudgeError) as e:
        label_ids(TOK, t)
    assert "not single, distinct tokens after 'n from user would be Response ' in this" in str(e.value)


def glued_bpe():
    """A byte-level BPE that glues a label to the character before it, as GPT-2's BPE does: ' A', ' B'
    (and ':A', ':B') are single tokens."""
    from nanoalign.tasks.arith import _bytes_to_unicode
    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    merges = [("Ġ", "A"), ("Ġ", "B"), (":", "A"), (":", "B")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    eos = len(vocab)
    hf = HFTokenizer(models.BPE(vocab={**vocab, "<eos>": eos}, merges=merges))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    hf.decoder = decoders.ByteLevel()
    return Tokenizer(hf, eos_id=eos, chat_format="raw")


@pytest.mark.parametrize("answer", ["Better: {label}", "BOX {label}", "Verdict:\n {label}"])
@pytest.mark.parametrize("which", ["byte", "glued"])
def test_the_prefix_ids_plus_one_label_token_spell_the_answer(answer, which):
    """label_ids: encode(prefix) + [label id] is exactly the answer's tokens, for a byte tokenizer and
    for one where the space before the label belongs to the label's token (' A')."""
    tok = TOK if which == "byte" else glued_bpe()
    t = JudgeTemplate("t", "{prompt} {a} {b}", answer)
    prefix, ids = label_ids(tok, t)
    assert answer.split("{label}")[0].startswith(prefix)
    for lab, i in zip(t.labels, ids):
        assert tok.encode(prefix) + [i] == tok.encode(answer.replace("{label}", lab))


def test_no_space_is_put_before_a_label_the_answer_writes_without_one():
    """An answer 'Verdict:{label}' whose ':A' is one token has no clean split; label_ids must not read
    the label after an inserted space (the judge would score a prompt the answer never shows)."""
    with pytest.raises(JudgeError, match="'nospace'"):
        label_ids(glued_bpe(), JudgeTemplate("nospace", "{prompt} {a} {b}", "Verdict:{label}"))
