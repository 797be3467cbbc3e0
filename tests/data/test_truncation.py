"""Truncation and masking at their edges, for every data kind (sft, pref, mo, prompt), through
nanoalign.data.tokenize_rows and make_batch; a row that cannot fit is dropped whole, never cut: a
self-judgement triple over sj_max_length, a judgment whose label would be cut.

The rules (nanoalign/data.py): prompt and response are tokenized separately; a response longer than
the room left (max_length - prompt) loses tokens from the RIGHT; a batch is right-padded with
targets[b, t] = ids[b, t + 1] and mask[b, t] = 1 exactly where that target is a kept response token;
a packed batch holds the same rows back to back besides (`check_packed`).
Prompt lengths are drawn at max_length - 1 (room for one response token), and the current rule for a
prompt of max_length tokens or more (a bad row) is in one test, named for it, below."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from nanoalign import judge
from nanoalign.data import DataError, make_batch, tokenize_pair, tokenize_rows
from nanoalign.tasks import arith as task
from tests.helpers import TOK, examples

PAD = TOK.pad_id
text = st.text(alphabet="abcdefgh 0123456789.+=?", min_size=1, max_size=24)
KINDS = ["sft", "pref", "mo", "prompt"]


def n_prompt(p):
    return len(TOK.encode_prompt(p))


def response_ids(r):
    return TOK.encode_response(r)          # the response's tokens, end of turn included


def row_of(kind, p, r1, r2, i):
    row = {"prompt": p, "_where": f"rows.jsonl:{i + 1}"}
    if kind == "sft":
        return {**row, "response": r1}
    if kind in ("pref", "mo"):
        row.update(chosen=r1, rejected=r2)
    if kind == "mo":   # its self-judgement triple: a judge prompt naming the better response
        row["sj"] = {"prompt": f"Which is better? A: {r1} B: {r2}", "chosen": "A", "rejected": "B"}
    return row


def expected_batch(seqs):
    """(ids, n_prompt) per row -> the right-padded batch as the rules above define it."""
    T = max(len(s) for s, _ in seqs)
    ids, targets = torch.full((len(seqs), T), PAD), torch.full((len(seqs), T), PAD)
    attn, mask = torch.zeros(len(seqs), T, dtype=torch.long), torch.zeros(len(seqs), T)
    for b, (s, n) in enumerate(seqs):
        ids[b, :len(s)] = torch.tensor(s)
        attn[b, :len(s)] = 1
        for t in range(len(s) - 1):
            targets[b, t] = s[t + 1]                      # hidden state t predicts token t + 1
            mask[b, t] = float(t + 1 >= n)                # ... and that token is a response token
    return ids, attn, targets, mask


def check_batch(batch, seqs, n_examples):
    ids, attn, targets, mask = expected_batch(seqs)
    assert torch.equal(batch["ids"], ids)
    assert torch.equal(batch["attn"].long(), attn)
    assert torch.equal(batch["targets"], targets)
    assert torch.equal(batch["mask"].float(), mask)
    kept = [len(s) - max(n, 1) for s, n in seqs]          # the kept response tokens that are targets
                                                          # (with no prompt, not the first)
    assert batch["mask"].sum(1).tolist() == kept
    assert batch["n_tokens"] == sum(kept[:n_examples])
    if "packed" in batch:
        check_packed(batch, seqs)


def check_packed(batch, seqs):
    """The padding-free layout: the rows' tokens back to back, each target the next token of its
    own row, the padded batch's response mask read at each token's slot, rows bounded by
    cu_seqlens."""
    p = batch["packed"]
    assert p["ids"].tolist() == [[t for s, _ in seqs for t in s]]
    assert p["cu_seqlens"].tolist() == [sum(len(s) for s, _ in seqs[:i]) for i in range(len(seqs) + 1)]
    assert p["targets"].tolist() == [s[t + 1] if t + 1 < len(s) else PAD for s, _ in seqs for t in range(len(s))]
    mask = batch["mask"].reshape(-1)[p["slot"]]
    assert mask.tolist() == [float(t + 1 < len(s) and t + 1 >= n) for s, n in seqs for t in range(len(s))]


def cut(p_ids, r_ids, max_length):
    """What a row must become: the prompt whole, the response's first (max_length - prompt) tokens."""
    return p_ids + r_ids[:max_length - len(p_ids)], len(p_ids)


@settings(max_examples=examples(30))
@pytest.mark.parametrize("kind", KINDS)
@given(rows=st.lists(st.tuples(text, text, text), min_size=1, max_size=4), extra=st.sampled_from([0, 1, 2, 5]),
       packed=st.booleans())
def test_responses_are_cut_from_the_right_and_masked(kind, rows, extra, packed):
    # the longest prompt gets max_length - 1 - extra tokens: with extra = 0, room for one response token
    max_length = max(n_prompt(p) for p, _, _ in rows) + 1 + extra
    sj_limit = 10_000
    ex, dropped = tokenize_rows([row_of(kind, *r, i) for i, r in enumerate(rows)], TOK, kind, max_length,
                                sj_max_length=sj_limit)
    assert dropped == 0 and len(ex) == len(rows)
    batch = make_batch(ex, kind, PAD, packed=packed)     # packed: the padded tensors plus its layout
    want = [(cut(TOK.encode_prompt(p), response_ids(r1), max_length),
             cut(TOK.encode_prompt(p), response_ids(r2), max_length)) for p, r1, r2 in rows]
    if kind == "prompt":
        assert batch["prompts"] == [TOK.encode_prompt(p) for p, _, _ in rows]
        return
    # an example says whether it lost response tokens (the run counts and names them)
    lost = [n_prompt(p) + max(len(response_ids(r1)), len(response_ids(r2)) if kind != "sft" else 0)
            > max_length for p, r1, r2 in rows]
    assert [e["cut"] for e in ex] == lost
    if kind == "sft":
        check_batch(batch, [w for w, _ in want], len(rows))
        return
    pref = batch["align"] if kind == "mo" else batch
    check_batch(pref, [w for w, _ in want] + [lo for _, lo in want], len(rows))   # chosen rows first
    if kind == "mo":   # the self-judgement triple fits, so it is kept whole
        sj = [row_of(kind, *r, i)["sj"] for i, r in enumerate(rows)]
        check_batch(batch["sj"], [(TOK.encode_prompt(s["prompt"]) + response_ids(s[k]),
                                   n_prompt(s["prompt"])) for k in ("chosen", "rejected") for s in sj],
                    len(rows))


@settings(max_examples=examples(15))
@given(rows=st.lists(st.tuples(text, text, text), min_size=1, max_size=4), over=st.sampled_from([0, 1]))
def test_self_judgement_triples_that_do_not_fit_are_dropped_whole(rows, over):
    """MO-ORPO: a judge prompt + answer of exactly sj_max_length tokens is kept, one token more drops
    the whole example (counted); never cut, its label is what the SJ task scores."""
    rs = [row_of("mo", *r, i) for i, r in enumerate(rows)]
    sizes = [max(n_prompt(r["sj"]["prompt"]) + len(response_ids(r["sj"][k])) for k in ("chosen", "rejected"))
             for r in rs]
    limit = max(sizes) - over
    ex, dropped = tokenize_rows(rs, TOK, "mo", 10_000, sj_max_length=limit)
    assert dropped == sum(s > limit for s in sizes) and len(ex) == len(rs) - dropped
    assert [e["row"]["_where"] for e in ex] == [r["_where"] for r, s in zip(rs, sizes) if s <= limit]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("over", [0, 1])
@settings(max_examples=examples(10))
@given(rows=st.lists(st.tuples(text, text, text), min_size=2, max_size=4), which=st.integers(0, 3))
def test_prompt_without_room_for_a_response_CURRENT_RULE_is_a_bad_row(kind, over, rows, which):
    """CURRENT RULE (to be adapted when a too-long prompt keeps its last tokens instead): a prompt of
    max_length tokens (over = 0: no room for a response) or more (over = 1) is a bad row: an error
    naming the row and the field, and how to go on, or with skip_bad a dropped row that is counted."""
    which %= len(rows)
    others = max(n_prompt(p) for i, (p, _, _) in enumerate(rows) if i != which)
    p = rows[which][0]
    while n_prompt(p) - over <= others:                   # every other prompt leaves room
        p += "x"
    rows[which] = (p, *rows[which][1:])
    max_length = n_prompt(p) - over
    rs = [row_of(kind, *r, i) for i, r in enumerate(rows)]
    with pytest.raises(DataError, match=rf"rows\.jsonl:{which + 1}: field 'prompt'") as e:
        tokenize_rows(rs, TOK, kind, max_length, sj_max_length=10_000)
    assert str(e.value).endswith(f"within max_length={max_length} (raise --max_length, or use --skip_bad_rows "
                                 f"to drop such rows)"), str(e.value)      # how to go on, not only what is wrong
    ex, dropped = tokenize_rows(rs, TOK, kind, max_length, skip_bad=True, sj_max_length=10_000)
    assert dropped == 1
    assert [e["row"]["_where"] for e in ex] == [r["_where"] for i, r in enumerate(rs) if i != which]


def raw_tok():
    """The built-in task's tokenizer under the 'raw' chat format: no template text, no BOS, so an
    empty prompt is no tokens at all."""
    from model.tokenizer import Tokenizer
    return Tokenizer(TOK.tok, eos_id=TOK.eos_id, pad_id=TOK.pad_id, chat_format="raw")


@settings(max_examples=examples(15))
@pytest.mark.parametrize("kind", ["sft", "pref"])
@given(rows=st.lists(st.tuples(text | st.just(""), text, text), min_size=1, max_size=3),
       packed=st.booleans())
def test_a_prompt_of_no_tokens_trains_on_every_response_token_after_the_first(kind, rows, packed):
    """An empty prompt is allowed (the raw format renders it as no tokens): the response's first
    token has nothing before it to be predicted from, every later one is a target (the mask was
    empty for such a row: it trained on nothing, and ORPO logged logp 0)."""
    tok = raw_tok()
    ex, dropped = tokenize_rows([row_of(kind, *r, i) for i, r in enumerate(rows)], tok, kind, 64)
    assert dropped == 0
    def seq(p, r):
        p_ids, r_ids = tok.encode_pair(p, r)
        return p_ids + r_ids, len(p_ids)
    seqs = [seq(p, r1) for p, r1, _ in rows] + ([seq(p, r2) for p, _, r2 in rows] if kind == "pref" else [])
    check_batch(make_batch(ex, kind, PAD, packed=packed), seqs, len(rows))


def test_a_prompt_of_no_tokens_and_a_one_token_response_is_a_bad_row():
    """Nothing to train on (no token has one before it): a bad row, not a silent 0/0 in a mean.
    A tokenizer without an end of turn leaves the answer 'a' one token."""
    from model.tokenizer import Tokenizer
    tok = Tokenizer(TOK.tok, chat_format="raw")            # no EOS: the raw format writes none
    rows = [{"prompt": "", "response": "ab", "_where": "f:1"}, {"prompt": "", "response": "a", "_where": "f:2"}]
    with pytest.raises(DataError, match="^f:2: the prompt is no tokens and the response one"):
        tokenize_rows(rows, tok, "sft", 64)
    ex, dropped = tokenize_rows(rows, tok, "sft", 64, skip_bad=True)
    assert dropped == 1 and [e["row"]["_where"] for e in ex] == ["f:1"]


# -- a judgment whose label would be cut is dropped whole ------------------------------------------
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


# -- tokenize_pair cuts by default; self-judgement triples drop whole ------------------------------
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


@pytest.mark.parametrize("method", ["jsft", "pref_aug"])
def test_the_judge_training_methods_keep_every_built_in_example_at_the_default_max_length(method):
    """A judgment holds the prompt and both answers in a template (docs/methods.md's Table 6 command
    is `--method jsft --judge_template principle`). A default of 384 tokens of their own (and
    MetaAligner's), from before --max_length had its auto, dropped 14052 of that command's 18052
    examples (judgments up to 478 tokens); auto (TRL's 1024, or the tiny model's 512-token context)
    keeps them all."""
    import train
    from model.model import Transformer, config_from_preset
    from nanoalign import REGISTRY
    from nanoalign.compute import max_length_of
    cfg = train.make_config(method=method, n_train=48, n_val=8, judge_template="principle")
    model = Transformer(config_from_preset("tiny"))
    run = train.Run(tok=task.build_tokenizer(), task=task)
    whole = train.load_split(cfg, REGISTRY[method], task, "train", run, max_length=10**6)
    assert max(len(e["ids"]) for e in whole) > 384                     # what a 384 would drop
    kept = train.load_split(cfg, REGISTRY[method], task, "train", run, max_length=max_length_of(cfg, model))
    assert len(kept) == len(whole)
