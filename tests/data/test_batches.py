"""Batches (nanoalign/data.py): make_batch counts examples and tokens for every kind of row and builds
on the device it is given; BatchOrder gives seeded epochs of full micro-batches and resumes where it
stopped."""
import pytest
import torch

from nanoalign import data
from nanoalign.data import BatchOrder, DataError, make_batch


# -- BatchOrder: seeded epochs of full micro-batches; batches count and move -----------------------
def test_batch_order_needs_a_full_micro_batch():
    with pytest.raises(DataError) as e:
        BatchOrder(3, 4, seed=0)
    assert str(e.value) == "only 3 training examples for a micro-batch of 4; lower --batch_size"
    assert BatchOrder(4, 4, seed=0).next() != []


def test_batch_order_epochs_are_seeded_permutations_without_the_ragged_tail():
    n, bs = 11, 3                                          # 3 full batches per epoch, 2 left out
    o = BatchOrder(n, bs, seed=5)
    epochs = [[o.next() for _ in range(n // bs)] for _ in range(4)]
    for ep in epochs:
        assert all(len(b) == bs for b in ep)
        flat = [i for b in ep for i in b]
        assert len(set(flat)) == len(flat) == 9 and set(flat) <= set(range(n))
    assert len({tuple(map(tuple, ep)) for ep in epochs}) > 1       # a fresh permutation per epoch
    assert o.pos == 4 * (n // bs)
    again = BatchOrder(n, bs, seed=5)
    assert [again.next() for _ in range(12)] == [b for ep in epochs for b in ep]
    other = BatchOrder(n, bs, seed=6)
    assert [other.next() for _ in range(12)] != [b for ep in epochs for b in ep]


def test_batch_order_resumes_from_its_position():
    a = BatchOrder(10, 2, seed=1)
    seq = [a.next() for _ in range(13)]
    for pos in (0, 4, 5, 7, 12):
        b = BatchOrder(10, 2, seed=1, pos=pos)
        assert [b.next() for _ in range(13 - pos)] == seq[pos:]


def test_batches_count_examples_and_are_built_on_the_given_device(monkeypatch):
    from nanoalign import data
    seen, real = [], data._tensor_batch

    def spy(seqs, n_prompts, n_examples, pad_id, device, examples):
        seen.append((n_examples, device))
        return real(seqs, n_prompts, n_examples, pad_id, "cpu", examples)
    monkeypatch.setattr(data, "_tensor_batch", spy)
    gpu = torch.device("cuda", 1)
    sft = [{"ids": [5, 6, 7], "n_prompt": 1}, {"ids": [5, 6], "n_prompt": 1}, {"ids": [9, 9, 9, 9], "n_prompt": 2}]
    pref = [{"chosen": [5, 6], "n_prompt_chosen": 1, "rejected": [5, 7, 8], "n_prompt_rejected": 1}] * 2
    assert data.make_batch(sft, "sft", 0, gpu)["n_examples"] == 3
    assert data.make_batch(pref, "pref", 0, gpu)["n_examples"] == 2
    data.make_batch([{"align": pref[0], "sj": pref[1]}], "mo", 0, gpu)
    assert seen == [(3, gpu), (2, gpu), (1, gpu), (1, gpu)]


def test_a_prompt_batch_counts_prompts_and_their_tokens():
    from nanoalign.data import make_batch
    ex = [{"prompt": [5, 6, 7], "row": {}}, {"prompt": [8], "row": {}}]
    b = make_batch(ex, "prompt", 0)
    assert b == {"prompts": [[5, 6, 7], [8]], "n_examples": 2, "n_tokens": 0, "n_seen": 4, "examples": ex}


# -- make_batch for each kind of row ---------------------------------------------------------------
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


def test_a_method_adds_its_own_kind_and_receives_its_own_length_limits(monkeypatch):
    """A method's example kind lives in its file (MO-ORPO's 'mo', nanoalign/mo_orpo.py): add_kind puts it
    in the table, refuses a name taken, and tokenize_rows hands the kind's own limits (a method's
    tokenize_options) to its tokenize beside max_length, whatever they are called."""
    from nanoalign.mo_orpo import mo_batch, mo_example
    monkeypatch.setattr(data, "KINDS", dict(data.KINDS))
    assert data.KINDS["mo"] == data.Kind(None, mo_example, mo_batch, data.KINDS["mo"].summary)
    seen = []
    own = data.Kind(None, lambda tok, row, limits, where: seen.append(limits) or {"row": row}, None, "x")
    data.add_kind("own", own)
    with pytest.raises(ValueError, match="data kind 'own' exists already"):
        data.add_kind("own", data.KINDS["pref"])
    assert data.KINDS["own"] is own
    ex, dropped = data.tokenize_rows([{"a": 1}, {"a": 2}], None, "own", 64, judge_limit=7)
    assert ex == [{"row": {"a": 1}}, {"row": {"a": 2}}] and dropped == 0
    assert seen == [{"max_length": 64, "judge_limit": 7}] * 2
