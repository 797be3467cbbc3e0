"""What the judge says (nanoalign/judge.py), as behaviour: a stub "language model" whose next-token
logits are a known function of the tokens it has read (tests/helpers.RuleJudge), and the judge
functions must return exactly what that rule says: first_probs, swapped_probs, principles combined
by win rate (Self-Judge) or averaged (OSP), the two papers' likelihood rules, and the choices made
from them (best_of, the tournament). Also: how the judge batches its rows, and that it judges in eval mode.

The stub reads its input as bytes. At a position where the text so far ends with the judge
template's answer up to the label ("Better: ", "Better for 'correct': "), it has read the whole judge
prompt: it finds the two responses between "\nA: ", "\nB: " and "\nChoose", and puts logit
s + BIAS on label A and -s on label B, s = SLOPE * (len(A) - len(B)): it prefers the longer response,
with a bias towards position A (under a principle whose name says "short": the shorter one, s
negated). Every other token of its vocabulary gets logit 0, and at every other position its label
logits are (OFF_CUE, 0). So, read at the last prompt position,

    P(A | x, a, b) = e^(s + BIAS) / Z,  P(B | x, a, b) = e^-s / Z
        Z = e^(s + BIAS) + e^-s                     the 'pair' rule (OSP): the two labels only
        Z = e^(s + BIAS) + e^-s + (V - 2)           the 'vocab' rule (Self-Judge): every token
    L_a = 1/2 [P(A | x, a, b) + P(B | x, b, a)],  L_b = 1/2 [P(B | x, a, b) + P(A | x, b, a)]
    p(a > b) = L_a / (L_a + L_b)                    (= 1/2 [p_A(x, a, b) + 1 - p_A(x, b, a)] for 'pair')

and a judge that read one position early would see (OFF_CUE, 0) instead."""
import math

import pytest
import torch
from hypothesis import example, given, settings, strategies as st

from model.lora import apply_lora
from nanoalign import judge
from nanoalign.judge import TEMPLATES, best_of, first_probs, judge_pairs, swapped_probs, tournament
from nanoalign.tasks import arith as task
from tests.helpers import (BIAS, ID_A, ID_B, JUDGE, SLOPE, TOK, VOCAB, RuleJudge, byte_tokenizer, examples,
                           sign, tiny)


pytestmark = pytest.mark.usefixtures("single_thread")


RULES = ["vocab", "pair"]


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
@example(rows=[("q", "ab", "abcdef")], names=["long", "short"])     # always a tie: one win each
def test_principles_are_combined_by_win_rate(likelihood, rows, names):
    """The win rate (the Self-Judge paper's principle-aware rule): a is preferred when it wins under more
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


@given(P=st.lists(st.lists(st.sampled_from([0.1, 0.3, 0.5, 0.7, 0.9]), min_size=3, max_size=3),
                  min_size=1, max_size=4),
       tie=st.lists(st.floats(0.01, 0.99), min_size=3, max_size=3), with_tie=st.booleans())
@example(P=[[0.9], [0.2]], tie=[0.3], with_tie=True).via("one win each: the tie decides, not the mean of P")
def test_win_rate_is_the_share_of_principles_won_and_on_an_even_split_the_tie(P, tie, with_tie):
    """win_rate as its docstring states it: the fraction of principles under which a wins (p = 1/2
    counts half), and where that is exactly 1/2, `tie` (by default the mean of P)."""
    n = min(len(P[0]), len(tie))
    P = torch.tensor([row[:n] for row in P], dtype=torch.float64)
    tie = torch.tensor(tie[:n], dtype=torch.float64)
    got = judge.win_rate(P, tie if with_tie else None)
    for i in range(n):
        rate = sum(1.0 if q > 0.5 else 0.5 if q == 0.5 else 0.0 for q in P[:, i].tolist()) / len(P)
        want = (tie[i].item() if with_tie else P[:, i].mean().item()) if rate == 0.5 else rate
        assert got[i].item() == pytest.approx(want)


@given(won=st.tuples(st.floats(0.02, 0.5), st.floats(0.02, 0.5)).filter(lambda t: t[0] > t[1] * 1.01),
       lost=st.tuples(st.floats(0.02, 0.5), st.floats(0.02, 0.5)).filter(lambda t: t[0] * 1.01 < t[1]))
@example(won=(0.5, 0.1), lost=(0.05, 0.2))
def test_win_rate_breaks_an_even_split_by_the_mean_judge_likelihoods(won, lost):
    """Under the 'vocab' rule the label likelihoods L_a, L_b of a principle need not sum to one, so
    the tie of an even split, mean L_a / (mean L_a + mean L_b) across principles, is not the mean of
    the principles' p: a judge that gives a principle "won" likelihoods (L_a, L_b) = won and
    another "lost" = lost decides by (won_a + lost_a) / (won_a + lost_a + won_b + lost_b)."""
    L = {"won": won, "lost": lost}

    def fake(model, tok, t, items, likelihood="vocab", batch_size=64):   # (N, 2) log L_a, log L_b
        return torch.tensor([[math.log(L[n][0]), math.log(L[n][1])] for _, _, _, n, _ in items])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(judge, "swapped_loglik", fake)
        got = judge_pairs(None, TOK, TEMPLATES["compact_principle"], [("q", "a", "b")],
                          [("won", "d"), ("lost", "d")])
    la, lb = won[0] + lost[0], won[1] + lost[1]
    assert got.item() == pytest.approx(la / (la + lb), rel=1e-5)


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
    with pytest.raises(judge.JudgeError) as e:
        swapped_probs(OrderJudge(), TOK, t, [item], likelihood="softmax")
    assert str(e.value) == "likelihood 'softmax' is unknown; choose from vocab, pair"


@settings(max_examples=examples(10))
@given(rows=st.lists(st.tuples(text, text, text), min_size=1, max_size=4))
def test_the_judge_functions_default_to_the_vocab_rule(rows):
    """Called without a likelihood, label_logprobs, swapped_loglik and the on-policy round's
    judge_probs judge by the 'vocab' rule (Self-Judge's): each label's share of the whole vocabulary."""
    from nanoalign import onpolicy
    t, items = TEMPLATES["compact"], [(x, *unequal(a, b)) for x, a, b in rows]
    got = judge.label_logprobs(JUDGE, TOK, t, items)
    assert torch.equal(got, judge.label_logprobs(JUDGE, TOK, t, items, "vocab"))
    want = [[math.log(q) for q in label_probs(a, b, None, "vocab")] for _, a, b in items]
    assert torch.allclose(got.double(), torch.tensor(want, dtype=torch.float64), atol=1e-5)
    got = judge.swapped_loglik(JUDGE, TOK, t, items)
    assert torch.equal(got, judge.swapped_loglik(JUDGE, TOK, t, items, "vocab"))
    want = [[math.log(q) for q in likelihoods(a, b, None, "vocab")] for _, a, b in items]
    assert torch.allclose(got.double(), torch.tensor(want, dtype=torch.float64), atol=1e-5)
    got = onpolicy.judge_probs(JUDGE, TOK, t, *zip(*items))
    for g, (_, a, b) in zip(got.tolist(), items):
        assert g == pytest.approx(p_swapped(a, b, likelihood="vocab"), abs=1e-6)


def test_judge_pairs_names_an_unknown_combine():
    """judge_pairs combines principles by 'win_rate' or 'mean'; any other name is an error naming it."""
    with pytest.raises(judge.JudgeError) as e:
        judge_pairs(JUDGE, TOK, TEMPLATES["compact_principle"], [("q", "a", "bb")], [("c", "d")],
                    combine="max")
    assert str(e.value) == "combine 'max' is unknown; choose 'win_rate' or 'mean'"


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


# -- the tournament on a total order ---------------------------------------------------------------
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


# -- a judge scores in eval mode ---------------------------------------------------------------------
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


# -- best-of under several principles --------------------------------------------------------------
def test_best_of_judges_a_principle_template_under_every_principle(monkeypatch):
    """With a principle template, self-rejection decides each match by win rate over the principles:
    here 'short' prefers the shorter response and the two 'long' ones the longer, so the longer
    wins 2 of 3 and the longest candidate is the tournament winner."""
    from nanoalign import judge
    calls = []

    def by_length(model, tok, t, items, likelihood="vocab", batch_size=64):
        calls.append(len(items))
        p = torch.tensor([float((len(a) < len(b)) == (name == "short")) for _, a, b, name, _ in items])
        return torch.stack([p.log(), (1 - p).log()], 1)            # log L_a, log L_b: p(a > b) = p
    monkeypatch.setattr(judge, "swapped_loglik", by_length)
    cands = ["yy", "y" * 9, "y", "y" * 5, "yyy"]
    t = judge.TEMPLATES["compact_principle"]
    three = [("short", "is short"), ("long", "is long"), ("long2", "is long too")]
    assert judge.best_of(None, None, t, "q", cands, principles=three) == 1
    assert judge.best_of(None, None, t, "q", cands, principles=three[:1]) == 2
    assert calls == [2, 2, 2, 1, 1, 1, 1, 1, 1] + [2, 1, 1]      # one call per principle per round
    with pytest.raises(judge.JudgeError):
        judge.best_of(None, None, t, "q", cands)


# -- how the judge batches its rows ----------------------------------------------------------------
class Recorder(torch.nn.Module):
    """A judge 'model' on `device` that records each forward's ids; logits favour no label."""

    def __init__(self, device="cpu", vocab=264):
        super().__init__()
        self.lm_head = torch.nn.Linear(1, vocab, bias=False, device=device)
        self.calls = []

    def forward(self, ids, mask):
        self.calls.append(ids)
        return torch.zeros(ids.shape[0], ids.shape[1], 1)

    def logits(self, h):
        return torch.zeros(h.shape[0], self.lm_head.out_features)


def test_the_judge_batch_is_built_on_the_models_device():
    """first_probs builds the left-padded ids on the device of the model's weights."""
    m = Recorder(device="meta")
    judge.first_probs(m, TOK, TEMPLATES["compact"], [("q", "x", "y"), ("qq", "xx", "y")])
    assert [c.device for c in m.calls] == [torch.device("meta")]


def test_judging_nothing_is_an_empty_tensor():
    """first_probs of no items: a tensor of 0 probabilities, no forward; label_logprobs of no items:
    0 rows of the two labels' log-probabilities, shape (0, 2)."""
    m = Recorder()
    p = judge.first_probs(m, TOK, TEMPLATES["compact"], [])
    assert p.shape == (0,) and m.calls == []
    assert judge.label_logprobs(m, TOK, TEMPLATES["compact"], []).shape == (0, 2) and m.calls == []


ITEMS = [("q", "x", "y"), ("qq", "x", "yy"), ("q", "xxx", "y")]


@pytest.mark.parametrize("how", ["first_probs", "swapped_probs", "judge_pairs", "judge_pairs_principles",
                                 "best_of"])
def test_the_judge_never_runs_more_rows_than_batch_size(how):
    """batch_size (the CLI's --batch_size) bounds the rows of every judge forward pass."""
    m = Recorder()
    if how == "first_probs":
        judge.first_probs(m, TOK, TEMPLATES["compact"], ITEMS, batch_size=2)
    elif how == "swapped_probs":
        judge.swapped_probs(m, TOK, TEMPLATES["compact"], ITEMS, batch_size=2)
    elif how == "judge_pairs":
        judge.judge_pairs(m, TOK, TEMPLATES["compact"], ITEMS, batch_size=2)
    elif how == "judge_pairs_principles":
        judge.judge_pairs(m, TOK, TEMPLATES["compact_principle"], ITEMS, [("c", "d"), ("e", "f")], batch_size=2)
    else:
        judge.best_of(m, TOK, TEMPLATES["compact"], "q", ["a", "bb", "c", "dd"], batch_size=2)
    assert m.calls and max(c.shape[0] for c in m.calls) <= 2


def test_a_tokenizer_without_a_pad_id_can_judge():
    """A tokenizer with no pad id (pad_id None) still judges, and the padding never changes a
    probability (the pads are masked)."""
    from tests.helpers import small_model
    model = small_model(0)
    nopad = byte_tokenizer()
    nopad.pad_id = None
    t = TEMPLATES["compact"]
    items = [("What is 1 + 1?", "2.", "3."), ("1 + 2?", "3", "4, I think.")]   # unequal lengths: padding
    p = judge.first_probs(model, nopad, t, items)
    assert torch.allclose(p, judge.first_probs(model, TOK, t, items), atol=1e-6)
