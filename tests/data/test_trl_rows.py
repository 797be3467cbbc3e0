"""TRL's preference rows, as TRL documents them, read and tokenized as the checkpoint's template gives
them: an explicit prompt, or an implicit one (the shared beginning of chosen and rejected), in both
the conversational and the standard (string) form. On SmolLM2 the ids are also transformers' own
(in its own process: the `hf` fixture, tests/hf_reference.py)."""
import json

import pytest
from hypothesis import example, given, strategies as st

from nanoalign.data import DataError, read_jsonl, tokenize_rows, validate_row
from nanoalign.rows import implicit_prompt
from tests.helpers import TOK

USER = {"role": "user", "content": "What color is the sky?"}
GOOD = {"role": "assistant", "content": "It is blue."}
BAD = {"role": "assistant", "content": "It is green."}


def write(tmp_path, *rows):
    f = tmp_path / "rows.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(f)


# -- the implicit prompt ---------------------------------------------------------------------------
def test_implicit_prompt_of_conversations_is_their_shared_leading_messages():
    p, c, r = implicit_prompt([USER, GOOD], [USER, BAD], "row")
    assert (p, c, r) == ([USER], [GOOD], [BAD])


# text in which spaces, other whitespace and word characters are all common
TEXT = st.text(st.sampled_from(" \n.ab") | st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20)


@given(TEXT, TEXT | st.just(""), TEXT)
@example(" ", "0", "0")              # one space shared: no prompt, a bad row
@example("  ", "a", "b")             # two: the prompt is one space
@example("Q: 1+1? ", "2", "3")     # the space before the answers goes with them
@example("Translate 'cat' to French. Ch", "at.", "ien.")      # inside a word: back to its start
@example("The answer is 4", ".", " or 5.")                       # one answer goes on in the word
@example("Ye", "s.", "ah.")          # the start of a word only: no prompt, a bad row
@example("Yes", "\n", " ")           # both answers start at whitespace: the word is whole
@example("Q: hi", "", "t")           # one side ends where the other goes on in the word
def test_implicit_prompt_of_strings_splits_at_the_last_word_boundary_they_share(prefix, a, b):
    if a[:1] == b[:1]:
        b = chr(ord(a[0]) + 1) + b[1:]                        # the two part right after the prefix
    chosen, rejected = prefix + a, prefix + b                 # (chosen may end there)
    # The rule, whole: the prompt is the shared text up to its last word boundary (a point with
    # whitespace right before it, or where each side goes on with whitespace or ends), less one space
    # right before that point (it goes with the responses, as TRL does). TRL splits at the first
    # difference, in a word too. No prompt left is a bad row: the start of a word alone says so.
    def boundary(k):
        return chosen[k - 1].isspace() or all(x[k:k + 1].isspace() or k == len(x) for x in (chosen, rejected))
    k = max((k for k in range(1, len(prefix) + 1) if boundary(k)), default=0)
    if k and chosen[k - 1] == " ":
        k -= 1
    if not k:
        why = "share no leading text" if boundary(len(prefix)) else "share only the start of a word"
        with pytest.raises(DataError, match=why):
            implicit_prompt(chosen, rejected, "row")
        return
    p, c, r = implicit_prompt(chosen, rejected, "row")
    assert (p, c, r) == (chosen[:k], chosen[k:], rejected[k:])
    assert p[-1].isspace() or all(x[:1].isspace() or not x for x in (c, r))   # both answers start a word


def test_rows_that_share_nothing_are_a_clear_error(tmp_path):
    f = write(tmp_path, {"chosen": [GOOD], "rejected": [BAD]})
    with pytest.raises(DataError, match=rf"{f}:1: no 'prompt' field, and 'chosen' and 'rejected' share no"):
        read_jsonl(f, "pref")
    f = write(tmp_path, {"chosen": "Blue.", "rejected": "Green."})
    with pytest.raises(DataError, match="share no leading text"):
        read_jsonl(f, "pref")
    f = write(tmp_path, {"chosen": "Blue.", "rejected": "Black."})
    with pytest.raises(DataError) as e:
        read_jsonl(f, "pref")
    assert str(e.value) == (f"{f}:1: no 'prompt' field, and 'chosen' and 'rejected' share only the start "
                            f"of a word ('Bl'), no whole words to take as the prompt")
    f = write(tmp_path, {"chosen": "Blue.", "rejected": [BAD]})
    with pytest.raises(DataError, match="not both strings or both message lists"):
        read_jsonl(f, "pref")


@pytest.mark.parametrize("same, what", [([USER, GOOD], "conversation"), ("Hi", "string")])
@pytest.mark.parametrize("kind", ["pref", "prompt"])
def test_a_row_whose_chosen_and_rejected_are_the_same_says_so(tmp_path, same, what, kind):
    """The same conversation twice left both responses empty: the error was "field 'chosen' is an
    empty list; a message list needs at least one ... message" (of a list of two messages), or
    "field 'chosen' is empty" (of "Hi"). It says what is wrong: there is no answer to prefer."""
    f = write(tmp_path, {"chosen": same, "rejected": same})
    with pytest.raises(DataError) as e:
        read_jsonl(f, kind)
    assert str(e.value) == (f"{f}:1: no 'prompt' field, and 'chosen' and 'rejected' are the same {what}, "
                            f"so there is no answer to prefer")


CONVERSATION = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]),
                                               "content": st.text(max_size=4)}), min_size=1, max_size=4)


@given(CONVERSATION.map(lambda c: c + [GOOD]) | TEXT.filter(str.strip))
def test_any_row_whose_chosen_and_rejected_are_the_same_says_so(same):
    what = "conversation" if isinstance(same, list) else "string"
    with pytest.raises(DataError, match=f"^row: no 'prompt' field, and 'chosen' and 'rejected' are the same {what}, "
                                        f"so there is no answer to prefer$"):
        implicit_prompt(same, same, "row")


# -- the on-policy methods read the implicit prompt too ---------------------------------------------
def test_an_implicit_prompt_preference_file_is_a_prompt_file(tmp_path):
    """The on-policy methods (the 'prompt' kind) refused the file DPO and ORPO train on: "missing
    field 'prompt' (a prompt row needs prompt)". Its prompt is the one read_pref takes."""
    rows = [{"chosen": [USER, GOOD], "rejected": [USER, BAD], "id": 1},
            {"chosen": "Translate 'cat' to French. Chat.", "rejected": "Translate 'cat' to French. Chien."}]
    f = write(tmp_path, *rows)
    got, _ = read_jsonl(f, "prompt")
    assert [r["prompt"] for r in got] == [[USER], "Translate 'cat' to French."]
    assert got == read_jsonl(f, "pref")[0] and got[0]["id"] == 1
    ex, dropped = tokenize_rows(got, TOK, "prompt", 128)
    assert dropped == 0 and ex[0]["prompt"] == TOK.encode_prompt([USER])
    with pytest.raises(DataError) as e:                          # no prompt, and no implicit one
        read_jsonl(write(tmp_path, {"chosen": "It is blue."}), "prompt")
    assert str(e.value).endswith(":1: missing field 'prompt' (a prompt row needs prompt; or, with no "
                                 "prompt, chosen and rejected conversations that begin with it)")


@pytest.mark.parametrize("row, typo", [
    # a misspelled 'prompt' beside chosen and rejected: no implicit-prompt row, whose prompt would be
    # taken from the answers, the typo ignored
    ({"promt": "Q:", "chosen": "Q: a", "rejected": "Q: b"}, "'promt': did you mean 'prompt'?"),
    # a short one too, which is close to 'prompt' alone and to nothing longer
    ({"prom": "Q:", "chosen": "Q: a", "rejected": "Q: b"}, "'prom': did you mean 'prompt'?"),
    # a misspelled 'chosen': the prompt is the missing field named, the typo the other shape's
    ({"chosn": "Q: a", "rejected": "Q: b"}, "'chosn': did you mean 'chosen'?"),
])
def test_a_prompt_row_with_a_misspelled_field_names_the_misspelling(row, typo):
    """A prompt row (the on-policy methods, sample.py --prompts_file) that misspells 'prompt', or the
    implicit-prompt row's 'chosen', is refused naming the key it misspelled, not read as the
    implicit-prompt row it is not."""
    with pytest.raises(DataError) as e:
        validate_row(row, "prompt", "f:1")
    assert str(e.value) == ("f:1: missing field 'prompt' (a prompt row needs prompt; or, with no prompt, chosen "
                            f"and rejected conversations that begin with it); the row has {typo}")


SIDE = st.one_of(st.lists(st.sampled_from([USER, GOOD, BAD, {"role": "user", "content": "and?"}]), max_size=3),
                 st.sampled_from(["", " ", "Q: 2+2?", "Q: 2+2? ", "Q: 2+", "A: 4", "A: 5 "]))


@given(SIDE, SIDE, SIDE)
@example([USER], [GOOD], [BAD])
@example("Q: 2+2? ", "4", "5")
@example([USER], [GOOD], [GOOD])
def test_a_prompt_row_without_a_prompt_reads_as_the_preference_row_does(shared, a, b):
    """Whatever chosen and rejected are, the 'prompt' kind reads a row without a prompt as the 'pref'
    kind does: the same row (the same prompt), or the same error."""
    row = {"chosen": shared + a if type(shared) is type(a) else a,
           "rejected": shared + b if type(shared) is type(b) else b}
    def read(kind):
        try:
            return validate_row(row, kind, "row")
        except DataError as e:
            return str(e)
    assert read("prompt") == read("pref")


# -- TRL's prompt-completion SFT rows ---------------------------------------------------------------
@pytest.mark.parametrize("prompt, completion", [([USER], [GOOD]), ("What color is the sky?", "It is blue.")],
                         ids=["conversational", "standard"])
def test_trl_prompt_completion_rows_are_sft_rows(tmp_path, prompt, completion):
    """TRL's SFT format names the response 'completion': a row of it reads as {prompt, response},
    conversational or standard, and is checked as a response is (a completion list with no
    assistant message is a bad row naming the field)."""
    (row,), _ = read_jsonl(write(tmp_path, {"prompt": prompt, "completion": completion}), "sft")
    assert row["prompt"] == prompt and row["response"] == completion
    with pytest.raises(DataError, match=r":1: field 'completion' is a message list with no assistant"):
        read_jsonl(write(tmp_path, {"prompt": [USER], "completion": [USER]}), "sft")


def test_a_prompt_completion_row_without_its_prompt_names_what_it_needs(tmp_path):
    f = write(tmp_path, {"completion": "It is blue."})
    with pytest.raises(DataError) as e:
        read_jsonl(f, "sft")
    assert str(e.value) == f"{f}:1: missing field 'prompt' (a sft row needs prompt, completion)"


def test_a_row_with_both_response_and_completion_is_refused(tmp_path):
    """Two names for the one answer: which one trains would be a guess."""
    f = write(tmp_path, {"prompt": "Hi", "response": "Hello.", "completion": "Hey."})
    with pytest.raises(DataError, match=r":1: both 'response' and 'completion'"):
        read_jsonl(f, "sft")


# -- on SmolLM2-135M-Instruct: the ids are what its template gives ------------------------------------
CONVERSATIONAL = pytest.mark.parametrize("row", [
    {"prompt": [USER], "chosen": [GOOD], "rejected": [BAD]},                 # explicit prompt
    {"chosen": [USER, GOOD], "rejected": [USER, BAD]},                       # implicit prompt
], ids=["explicit", "implicit"])


@CONVERSATIONAL
def test_conversational_trl_rows_tokenize_as_the_template_renders(tmp_path, smollm2, row):
    rows, _ = read_jsonl(write(tmp_path, row), "pref")
    (ex,), dropped = tokenize_rows(rows, smollm2, "pref", 512)
    assert dropped == 0
    prompt = smollm2.apply_chat_template([USER], add_generation_prompt=True, tokenize=True)
    assert "You are a helpful AI assistant named SmolLM" in smollm2.decode(prompt, skip_special=False)
    for side, answer in (("chosen", GOOD), ("rejected", BAD)):
        n = ex[f"n_prompt_{side}"]
        assert ex[side][:n] == prompt
        full = smollm2.apply_chat_template([USER, answer], tokenize=True)
        assert ex[side] == full                                  # prompt + response = the whole turn
        assert smollm2.decode(ex[side][n:], skip_special=False) == answer["content"] + "<|im_end|>\n"


@CONVERSATIONAL
def test_conversational_trl_rows_are_the_ids_transformers_gives(tmp_path, smollm2, hf, row):
    """What TRL would train on: transformers' template ids of the prompt, and of the whole turn."""
    ref = hf.tokenizer(smollm2.tok, smollm2.chat_template, smollm2.special_tokens)
    rows, _ = read_jsonl(write(tmp_path, row), "pref")
    (ex,), _ = tokenize_rows(rows, smollm2, "pref", 512)
    prompt = ref.apply_chat_template([USER], tokenize=True, add_generation_prompt=True)
    for side, answer in (("chosen", GOOD), ("rejected", BAD)):
        assert ex[side][:ex[f"n_prompt_{side}"]] == prompt
        assert ex[side] == ref.apply_chat_template([USER, answer], tokenize=True)


@pytest.mark.slow
def test_a_trl_row_trains_on_smollm2(tmp_path, smollm2):
    """One ORPO step on the real model, from an implicit-prompt conversational file."""
    import train
    from model.gguf_import import convert, default_gguf_path
    ckpt = str(tmp_path / "smollm2")
    convert(default_gguf_path(), ckpt)
    f = write(tmp_path, *[{"chosen": [USER, GOOD], "rejected": [USER, BAD]}] * 2)
    hist = train.train(train.make_config(method="orpo", init_from=ckpt, train_data=f, val_data="",
                                         out_dir=str(tmp_path / "run"), max_steps=1, batch_size=2,
                                         max_length=256, final_eval=False))
    assert len(hist) == 1 and hist[0] > 0
