"""The judge (issue 6): position-swap identities, the tournament, template checks, JSFT data."""
import dataclasses

import pytest
import torch
from hypothesis import given, strategies as st
from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers

import train
from model.tokenizer import Tokenizer
from experiments import task
from nanoalign import judge
from nanoalign.judge import (TEMPLATES, JudgeError, JudgeTemplate, first_probs, judgment_rows,
                             label_ids, swapped_probs, tournament)
from tests.test_mo_orpo import small_model
from tests.test_train import run_cfg

TOK = task.build_tokenizer()
text = st.text(alphabet="abcxyz 0123456789.+=", min_size=1, max_size=16)


@given(seed=st.integers(0, 50), x=text, a=text, b=text,
       name=st.sampled_from(["compact", "compact_principle", "compact_rationale"]))
def test_swapped_probabilities_sum_to_one(seed, x, a, b, name):
    model = small_model(seed).eval()
    t = TEMPLATES[name]
    items = [(x, a, b, "correct", "the sum is right"), (x, b, a, "correct", "the sum is right")]
    p = swapped_probs(model, TOK, t, items)
    assert abs(p[0].item() + p[1].item() - 1) < 1e-6
    raw = first_probs(model, TOK, t, items)
    assert ((raw > 0) & (raw < 1)).all()                  # a real softmax over the two labels


class FirstPositionJudge(torch.nn.Module):
    """A 'model' that always puts its mass on the first position's label token."""

    def __init__(self, label_id, vocab=264):
        super().__init__()
        self.lm_head = torch.nn.Linear(1, vocab, bias=False)
        self.label_id = label_id

    def forward(self, ids, mask):
        return torch.zeros(ids.shape[0], ids.shape[1], 1)

    def logits(self, h):
        out = torch.zeros(h.shape[0], self.lm_head.out_features)
        out[:, self.label_id] = 30.0
        return out


@given(x=text, a=text, b=text)
def test_position_biased_judge_is_neutral_after_the_swap(x, a, b):
    t = TEMPLATES["compact"]
    _, (ia, _) = label_ids(TOK, t)
    m = FirstPositionJudge(ia)
    assert first_probs(m, TOK, t, [(x, a, b)])[0].item() > 0.999
    assert swapped_probs(m, TOK, t, [(x, a, b)])[0].item() == pytest.approx(0.5, abs=1e-6)


@given(st.integers(1, 40).flatmap(lambda n: st.permutations(list(range(n)))))
def test_tournament_finds_the_top_of_a_total_order(ranks):
    calls, pairs_seen = [], 0

    def judge_fn(pairs):
        nonlocal pairs_seen
        calls.append(len(pairs))
        pairs_seen += len(pairs)
        return [1.0 if ranks[i] > ranks[j] else 0.0 for i, j in pairs]

    n = len(ranks)
    assert tournament(n, judge_fn) == ranks.index(n - 1)
    assert pairs_seen == n - 1
    assert len(calls) == (n - 1).bit_length()            # one batched call per round


def _wordlevel_tok():
    vocab = {w: i for i, w in enumerate(["[UNK]", "Better:", "A", "B", "Which", "<eos>", "<pad>"])}
    hf = HFTokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return Tokenizer(hf, eos_id=5, pad_id=6, chat_format="raw")


def test_labels_must_be_single_known_tokens():
    with pytest.raises(JudgeError, match="'multi'"):     # 'First' is 5 byte tokens
        label_ids(TOK, JudgeTemplate("multi", "{prompt} {a} {b}", "Better: {label}", ("First", "Second")))
    wl = _wordlevel_tok()
    assert label_ids(wl, TEMPLATES["compact"])[1] == (2, 3)
    with pytest.raises(JudgeError, match="'unknown'"):   # 'Z' is not in this vocabulary
        label_ids(wl, JudgeTemplate("unknown", "{prompt} {a} {b}", "Better: {label}", ("A", "Z")))


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
