"""The judge as behaviour: a stub "language model" whose next-token logits are a known function of the
tokens it has read, and the judge functions must return exactly what that rule says.

The stub (RuleJudge) reads its input as bytes. At a position where the text so far ends with the
judge template's answer up to the label ("Better: ", "Better for 'correct': "), it has read the whole
judge prompt: it finds the two responses between "\\nA: ", "\\nB: " and "\\nChoose", and puts logit
s + BIAS on label A and -s on label B, s = SLOPE * (len(A) - len(B)): it prefers the longer response,
with a bias towards position A (under a principle whose name says "short": the shorter one, s
negated). Every other token of its vocabulary gets logit 0, and at every other position its label
logits are (OFF_CUE, 0). So, read at the last prompt position,

    P(A | x, a, b) = e^(s + BIAS) / Z,  P(B | x, a, b) = e^-s / Z
        Z = e^(s + BIAS) + e^-s                     the 'pair' rule (OSP): the two labels only
        Z = e^(s + BIAS) + e^-s + (V - 2)           the 'vocab' rule (Self-Judge): every token
    L_a = 1/2 [P(A | x, a, b) + P(B | x, b, a)],  L_b = 1/2 [P(B | x, a, b) + P(A | x, b, a)]
    p(a > b) = L_a / (L_a + L_b)                    (= 1/2 [p_A(x, a, b) + 1 - p_A(x, b, a)] for 'pair')

and a judge that read one position early would see (OFF_CUE, 0) instead.
"""
import math
import re
import types

import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

from nanoalign import judge
from nanoalign.data import make_batch, tokenize_rows
from nanoalign.judge import TEMPLATES, best_of, first_probs, judge_pairs, swapped_probs, tournament
from nanoalign.testing import tiny_model
from tests.helpers import byte_tokenizer, call_method, examples, one_thread, record_on_policy

TOK = byte_tokenizer()
ID_A, ID_B = TOK.encode("A")[0], TOK.encode("B")[0]
SLOPE, BIAS, OFF_CUE = 0.1, 0.75, -4.0   # small enough that p stays below 1 in float32
VOCAB = 262
RULES = ["vocab", "pair"]
CUE = re.compile(r"Better( for '[^']*')?: $")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


class RuleJudge(torch.nn.Module):
    """The interface of model.model.Transformer (forward(ids, attn) -> hidden, logits(hidden),
    lm_head.weight, cfg.eos_ids) with known behaviour; hidden states are the two label logits."""

    def __init__(self, vocab=VOCAB):
        super().__init__()
        self.lm_head = torch.nn.Linear(2, vocab, bias=False)
        with torch.no_grad():
            self.lm_head.weight.zero_()
            self.lm_head.weight[ID_A, 0] = 1.0
            self.lm_head.weight[ID_B, 1] = 1.0
        self.cfg = types.SimpleNamespace(eos_ids=[TOK.eos_id], max_seq_len=1 << 20)

    @staticmethod
    def judgment(text):
        """(logit A, logit B) after reading `text` (bytes as latin-1 characters)."""
        cue = CUE.search(text)
        if not cue:
            return OFF_CUE, 0.0
        a0 = text.index("\nA: ") + 4
        b0 = text.rindex("\nB: ")
        end = text.rindex("\nChoose")
        s = sign(cue.group(1)) * SLOPE * ((b0 - a0) - (end - b0 - 4))
        return s + BIAS, -s

    def forward(self, ids, attn=None):
        attn = torch.ones_like(ids) if attn is None else attn
        out = torch.zeros(ids.shape[0], ids.shape[1], 2)
        for b in range(ids.shape[0]):
            text = ""
            for t in range(ids.shape[1]):
                if attn[b, t]:                                   # padding is not read
                    i = int(ids[b, t])
                    text += chr(i) if i < 256 else "\0"          # special tokens: one placeholder
                out[b, t] = torch.tensor(self.judgment(text))
        return out

    def logits(self, h):
        return self.lm_head(h).float()


def sign(principle):
    return -1.0 if principle and "short" in principle else 1.0


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def p_first(a, b, principle=None):
    """What the rule says the label probability of position A is, over the two labels."""
    return sigmoid(2 * sign(principle) * SLOPE * (len(a) - len(b)) + BIAS)


def label_probs(a, b, principle, likelihood):
    """(P(A), P(B)) after reading J(x, a, b), by the rule of `likelihood`."""
    s = sign(principle) * SLOPE * (len(a) - len(b))
    ea, eb = math.exp(s + BIAS), math.exp(-s)
    z = ea + eb + (VOCAB - 2 if likelihood == "vocab" else 0)
    return ea / z, eb / z


def likelihoods(a, b, principle=None, likelihood="pair"):
    """(L_a, L_b): each response's label probability averaged over both position orders."""
    pa1, pb1 = label_probs(a, b, principle, likelihood)
    pa2, pb2 = label_probs(b, a, principle, likelihood)
    return 0.5 * (pa1 + pb2), 0.5 * (pb1 + pa2)


def p_swapped(a, b, principle=None, likelihood="pair"):
    la, lb = likelihoods(a, b, principle, likelihood)
    return la / (la + lb)


text = st.text(alphabet="abcxyz 0123456789.+=?", min_size=1, max_size=12)
JUDGE = RuleJudge()


def unequal(a, b):
    return (a, b) if len(a) != len(b) else (a + "z", b)


@settings(max_examples=examples(15))
@given(rows=st.lists(st.tuples(text, text, text), min_size=1, max_size=5),
       template=st.sampled_from(["compact", "compact_principle"]), batch_size=st.integers(1, 4))
def test_first_probs_reads_the_label_at_the_last_prompt_position(rows, template, batch_size):
    items = [(x, *unequal(a, b), "correct", "the sum is right") for x, a, b in rows]
    got = first_probs(JUDGE, TOK, TEMPLATES[template], items, batch_size=batch_size)
    assert got.shape == (len(items),)
    for g, (_, a, b, *_) in zip(got.tolist(), items):
        assert g == pytest.approx(p_first(a, b), abs=1e-6)


@settings(max_examples=examples(15))
@pytest.mark.parametrize("likelihood", RULES)
@given(rows=st.lists(st.tuples(text, text, text), min_size=1, max_size=5), batch_size=st.integers(1, 4))
def test_swapped_probs_average_both_position_orders(likelihood, rows, batch_size):
    items = [(x, *unequal(a, b)) for x, a, b in rows]
    got = swapped_probs(JUDGE, TOK, TEMPLATES["compact"], items, batch_size=batch_size, likelihood=likelihood)
    for g, (_, a, b) in zip(got.tolist(), items):
        assert g == pytest.approx(p_swapped(a, b, likelihood=likelihood), abs=1e-6)
        # the longer response wins once the position bias is averaged out
        assert (g > 0.5) == (len(a) > len(b))


@settings(max_examples=examples(10))
@pytest.mark.parametrize("likelihood", RULES)
@given(rows=st.lists(st.tuples(text, text, text), min_size=1, max_size=3),
       names=st.lists(st.sampled_from(["long", "longer", "short"]), min_size=1, max_size=4))
def test_principles_are_combined_by_jm_pr(likelihood, rows, names):
    """JM-PR (the Self-Judge paper's principle-aware rule): a is preferred when it wins under more
    than half of the principles; the result is the win rate, or on a tie the mean likelihood of the
    judge tokens across principles, mean L_a against mean L_b."""
    items = [(x, *unequal(a, b)) for x, a, b in rows]
    got = judge_pairs(JUDGE, TOK, TEMPLATES["compact_principle"], items,
                      [(n, f"prefer {n} answers") for n in names], likelihood=likelihood)
    for g, (_, a, b) in zip(got.tolist(), items):
        P = [p_swapped(a, b, n, likelihood) for n in names]
        rate = sum(1.0 if q > 0.5 else 0.5 if q == 0.5 else 0.0 for q in P) / len(P)
        la = sum(likelihoods(a, b, n, likelihood)[0] for n in names)
        lb = sum(likelihoods(a, b, n, likelihood)[1] for n in names)
        assert g == pytest.approx(la / (la + lb) if rate == 0.5 else rate, abs=1e-6)


@settings(max_examples=examples(10))
@pytest.mark.parametrize("likelihood", RULES)
@given(rows=st.lists(st.tuples(text, text, text), min_size=1, max_size=3),
       names=st.lists(st.sampled_from(["long", "longer", "short"]), min_size=1, max_size=4))
def test_principles_are_averaged_for_osp(likelihood, rows, names):
    """OSP's target under several principles: the mean of each principle's swapped p."""
    items = [(x, *unequal(a, b)) for x, a, b in rows]
    got = judge_pairs(JUDGE, TOK, TEMPLATES["compact_principle"], items,
                      [(n, f"prefer {n} answers") for n in names], likelihood=likelihood, combine="mean")
    for g, (_, a, b) in zip(got.tolist(), items):
        assert g == pytest.approx(sum(p_swapped(a, b, n, likelihood) for n in names) / len(names), abs=1e-6)


class OrderJudge(RuleJudge):
    """Fixed full-vocabulary label probabilities, by which response is shown first: P(A) = 0.06,
    P(B) = 0.02 (the other 0.92 on one other token) with 'first' in position A, P(A) = 0.6,
    P(B) = 0.3 (0.1 elsewhere) with 'second' there. Its logits are the logs of those probabilities."""

    def forward(self, ids, attn=None):
        flag = [float("\nA: first\n" in TOK.decode(row[m.bool()].tolist())) for row, m in zip(ids, attn)]
        return torch.tensor(flag).view(-1, 1, 1).expand(ids.shape[0], ids.shape[1], 1)

    def logits(self, h):
        probs = torch.zeros(h.shape[0], VOCAB, dtype=torch.float64)
        for i, first in enumerate(h[:, 0].tolist()):
            probs[i, [ID_A, ID_B, ord("z")]] = torch.tensor([0.06, 0.02, 0.92] if first else [0.6, 0.3, 0.1],
                                                             dtype=torch.float64)
        return probs.log()


def test_the_two_papers_rules_can_pick_different_winners():
    """Self-Judge's rule averages each response's judge-token likelihood over both orders:
    L_first = (0.06 + 0.3) / 2 = 0.18 < L_second = (0.02 + 0.6) / 2 = 0.31, so 'second' wins.
    OSP's softmax over the two labels, averaged: (0.06/0.08 + 0.3/0.9) / 2 = 0.542, 'first' wins."""
    t, item = TEMPLATES["compact"], ("q", "first", "second")
    vocab = swapped_probs(OrderJudge(), TOK, t, [item], likelihood="vocab").item()
    pair = swapped_probs(OrderJudge(), TOK, t, [item], likelihood="pair").item()
    assert vocab == pytest.approx(0.18 / 0.49, abs=1e-6) and vocab < 0.5
    assert pair == pytest.approx((0.75 + 1 / 3) / 2, abs=1e-6) and pair > 0.5
    # each method's default is its paper's rule, and the tournament decides as the rule says
    assert best_of(OrderJudge(), TOK, t, "q", ["first", "second"]) == 1
    assert best_of(OrderJudge(), TOK, t, "q", ["first", "second"], likelihood="pair") == 0
    from tests.helpers import method_config
    self_judge = ("jsft", "self_judge", "self_judge_offpolicy")
    assert [method_config(m).likelihood for m in self_judge] == ["vocab"] * 3
    assert [method_config(m).likelihood for m in ("pref_aug", "osp")] == ["pair"] * 2
    with pytest.raises(judge.JudgeError, match="'softmax' is unknown"):
        swapped_probs(OrderJudge(), TOK, t, [item], likelihood="softmax")


@settings(max_examples=examples(10))
@given(lengths=st.lists(st.integers(1, 30), min_size=1, max_size=9, unique=True), x=text)
def test_best_of_returns_the_candidate_the_rule_prefers(lengths, x):
    cands = ["y" * n for n in lengths]
    assert best_of(JUDGE, TOK, TEMPLATES["compact"], x, cands) == lengths.index(max(lengths))


@given(lengths=st.lists(st.integers(1, 30), min_size=1, max_size=17))
def test_tournament_winner_under_a_length_rule(lengths):
    """p(i > j) = 1 if i is longer, 0 if shorter, 1/2 on a tie (ties go to the first of the pair):
    the winner is the longest candidate, and of several longest ones the first."""
    def judge_fn(pairs):
        return [0.5 if lengths[i] == lengths[j] else float(lengths[i] > lengths[j]) for i, j in pairs]
    assert tournament(len(lengths), judge_fn) == lengths.index(max(lengths))


# -- the methods that judge: pairs oriented by the judge's rule ----------------------------------------
def blen(ids):
    """The length of a sample as the judge reads it: the bytes of its decoded text."""
    return len(TOK.decode(ids).encode())


def prompt_batch(n):
    rows = [{"prompt": f"What is {i} + {2 * i + 1}?"} for i in range(n)]
    ex, _ = tokenize_rows(rows, TOK, "prompt", 64)
    return make_batch(ex, "prompt", TOK.pad_id)


def policy(seed):
    return tiny_model(seed, vocab_size=262, bos_token_id=256, eos_token_id=257, pad_token_id=258,
                      max_seq_len=96, init_std=0.3)


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
