"""Tests written to kill surviving mutants of nanoalign/data.py and nanoalign/judge.py (docs/mutation.md):
error messages that name the row, the keep_whole rule on both responses of a pair, the batch
counts of the MO-ORPO kind, the device a batch is built on, the judge's prompt messages, the split
of the answer at the label for tokenizers that glue the space to the label, and the judge's batch
size and empty input. Each test states a property derived by hand, never a number read off the output."""
import dataclasses

import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

from model.tokenizer import Tokenizer
from nanoalign import data, judge
from nanoalign.data import DataError, make_batch, tokenize_pair, tokenize_rows
from nanoalign.judge import TEMPLATES, JudgeError, JudgeTemplate, label_ids
from tests.helpers import byte_tokenizer

TOK = byte_tokenizer()


# -- data: a tokenizer's own error names the row ------------------------------------------------------
class Refuses:
    """A tokenizer whose chat template refuses any text containing 'BAD' (like Gemma refusing a
    system message): its ValueError must come back as a DataError naming the row."""

    @staticmethod
    def _check(*parts):
        if "BAD" in str(parts):
            raise ValueError("the template refuses this")

    def encode_pair(self, prompt, response):
        self._check(prompt, response)
        return [5, 6], [7, 8]

    def encode_prompt(self, prompt):
        self._check(prompt)
        return [5, 6]


@pytest.mark.parametrize("kind, row", [
    ("sft", {"prompt": "p", "response": "BAD"}),
    ("pref", {"prompt": "p", "chosen": "c", "rejected": "r BAD"}),     # only the rejected side refused
    ("pref", {"prompt": "p", "chosen": "c BAD", "rejected": "r"}),
    ("prompt", {"prompt": "BAD"}),
    ("mo", {"prompt": "p", "chosen": "c", "rejected": "r",            # only the SJ triple refused
            "sj": {"prompt": [{"role": "user", "content": "BAD"}], "chosen": "A", "rejected": "B"}}),
])
def test_a_template_error_is_a_data_error_naming_the_row(kind, row):
    """A template's ValueError on any part of a row is a DataError '<file>:<line>: <error>'."""
    rows = [{**row, "_where": "f.jsonl:3"}]
    with pytest.raises(DataError) as e:
        tokenize_rows(rows, Refuses(), kind, 16, sj_max_length=16)
    assert str(e.value) == "f.jsonl:3: the template refuses this"
    assert tokenize_rows(rows, Refuses(), kind, 16, skip_bad=True, sj_max_length=16) == ([], 1)


def test_tokenize_pair_without_a_where_names_the_row_as_row():
    """tokenize_pair's errors name 'row' when the caller gives no location (as tokenize_rows does)."""
    p, _ = TOK.encode_pair("What is 2 + 2?", "4")
    with pytest.raises(DataError) as e:
        tokenize_pair(TOK, "What is 2 + 2?", "4", len(p))
    assert str(e.value) == (f"row: field 'prompt' is {len(p)} tokens, which leaves no room for the "
                            f"response within max_length={len(p)}")


def test_tokenize_pair_cuts_the_response_by_default():
    """By default (keep_whole=False) a response that does not fit loses tokens from the right."""
    p, r = TOK.encode_pair("q", "a long answer")
    ids, n = tokenize_pair(TOK, "q", "a long answer", len(p) + 3)
    assert (ids, n) == (p + r[:3], len(p))


def sj_row(sj_chosen, sj_rejected):
    return {"prompt": "q", "chosen": "4.", "rejected": "5.", "_where": "f:1",
            "sj": {"prompt": "Which is better?", "chosen": sj_chosen, "rejected": sj_rejected}}


@pytest.mark.parametrize("chosen, rejected", [("Option I.", "Option II."), ("Option II.", "Option I.")])
def test_an_sj_triple_drops_whole_when_either_answer_is_over_sj_max_length(chosen, rejected):
    """An SJ triple is never cut: one token over sj_max_length on the chosen OR the rejected side drops
    the example (names like I / II make the two answers one token apart)."""
    p, rc = TOK.encode_pair("Which is better?", chosen)
    _, rr = TOK.encode_pair("Which is better?", rejected)
    fits = len(p) + min(len(rc), len(rr))
    assert tokenize_rows([sj_row(chosen, rejected)], TOK, "mo", 64, sj_max_length=fits) == ([], 1)
    ex, dropped = tokenize_rows([sj_row(chosen, rejected)], TOK, "mo", 64, sj_max_length=fits + 1)
    assert dropped == 0 and ex[0]["sj"]["chosen"] == p + rc and ex[0]["sj"]["rejected"] == p + rr


def test_mo_rows_without_an_sj_max_length_limit_the_sj_triple_by_max_length():
    """tokenize_rows(kind='mo') with sj_max_length left at None limits the SJ triple by max_length."""
    row = sj_row("Option I.", "Option II.")
    p, rr = TOK.encode_pair("Which is better?", "Option II.")
    ex, dropped = tokenize_rows([row], TOK, "mo", len(p) + len(rr))
    assert dropped == 0 and ex[0]["sj"]["rejected"] == p + rr
    assert tokenize_rows([row], TOK, "mo", len(p) + len(rr) - 1) == ([], 1)


# -- data: batches -------------------------------------------------------------------------------------
SFT = [{"ids": [5, 6, 7], "n_prompt": 1}, {"ids": [5, 6], "n_prompt": 1}, {"ids": [9, 9, 9, 9], "n_prompt": 2}]
PREF = [{"chosen": [5, 6, 7], "n_prompt_chosen": 1, "rejected": [5, 8], "n_prompt_rejected": 1},
        {"chosen": [5, 6], "n_prompt_chosen": 1, "rejected": [5, 9, 9, 9], "n_prompt_rejected": 1}]
SJ = [{"chosen": [3, 3, 3, 3, 4], "n_prompt_chosen": 4, "rejected": [3, 3, 3, 3, 5], "n_prompt_rejected": 4}] * 2


def test_an_sft_batch_counts_its_examples():
    """n_examples of an SFT batch is its number of rows; n_tokens its response tokens."""
    b = make_batch(SFT, "sft", 0)
    assert b["n_examples"] == 3 and b["n_tokens"] == 2 + 1 + 2


@pytest.mark.parametrize("kind, ex", [("sft", SFT), ("pref", PREF)])
def test_every_tensor_of_a_batch_is_moved_to_the_given_device(kind, ex, monkeypatch):
    """make_batch(..., device) hands `device` to .to() of every tensor it builds."""
    seen, real = [], data.collate

    class Spy:
        def __init__(self, t):
            self.t = t

        def to(self, device):
            seen.append(device)
            return self.t
    monkeypatch.setattr(data, "collate", lambda *a: {k: Spy(v) for k, v in real(*a).items()})
    gpu = torch.device("cuda", 1)
    make_batch(ex, kind, 0, gpu)
    assert seen == [gpu] * 4


def test_an_mo_batch_counts_alignment_examples_and_tokens_of_both_tasks():
    """An MO batch: n_examples = rows, n_tokens = the alignment batch's chosen response tokens,
    n_seen = the tokens of both the alignment and the SJ batch (all go through the model)."""
    ex = [{"align": a, "sj": s} for a, s in zip(PREF, SJ)]
    b = make_batch(ex, "mo", 0)
    assert b["n_examples"] == 2
    assert b["n_tokens"] == 2 + 1                        # chosen responses [6, 7] and [6]
    assert b["n_seen"] == (3 + 2 + 2 + 4) + 4 * 5        # every real token of both batches
    assert b["n_tokens"] == b["align"]["n_tokens"]
    assert b["n_seen"] == int(b["align"]["attn"].sum() + b["sj"]["attn"].sum())


# -- judge: the prompt ---------------------------------------------------------------------------------
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


class Draws:
    """A stand-in for random.Random: randrange gives 0 (the first SJ template), random gives u."""

    def __init__(self, u):
        self.u = u

    def randrange(self, n):
        return 0

    def random(self):
        return self.u


def test_the_rejected_response_goes_first_when_the_draw_is_below_0_55():
    """sj_triple: rejected first iff u < 0.55 for u = random() in [0, 1): probability exactly 0.55."""
    row = {"prompt": "q", "chosen": "good", "rejected": "bad"}
    assert judge.sj_triple(row, Draws(0.55 - 2 ** -53))["rejected_first"] is True
    sj = judge.sj_triple(row, Draws(0.55))
    assert sj["rejected_first"] is False
    assert sj["chosen"] == "Response A is better." and "Response A: good\n" in sj["prompt"][0]["content"]


# -- judge: reading the label off one token ---------------------------------------------------------------
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
    from experiments.task import _bytes_to_unicode
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


# -- judge: the probability -------------------------------------------------------------------------------
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
    """first_probs of no items: a tensor of 0 probabilities, no forward."""
    m = Recorder()
    p = judge.first_probs(m, TOK, TEMPLATES["compact"], [])
    assert p.shape == (0,) and m.calls == []


ITEMS = [("q", "x", "y"), ("qq", "x", "yy"), ("q", "xxx", "y")]


@pytest.mark.parametrize("how", ["swapped_probs", "judge_pairs", "judge_pairs_principles", "best_of"])
def test_the_judge_never_runs_more_rows_than_batch_size(how):
    """batch_size (the CLI's --batch_size) bounds the rows of every judge forward pass."""
    m = Recorder()
    if how == "swapped_probs":
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
    from tests.test_mo_orpo import small_model
    model = small_model(0)
    nopad = byte_tokenizer()
    nopad.pad_id = None
    t = TEMPLATES["compact"]
    items = [("What is 1 + 1?", "2.", "3."), ("1 + 2?", "3", "4, I think.")]   # unequal lengths: padding
    p = judge.first_probs(model, nopad, t, items)
    assert torch.allclose(p, judge.first_probs(model, TOK, t, items), atol=1e-6)
