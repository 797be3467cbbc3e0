"""Reading and checking rows (nanoalign/rows.py, through nanoalign/data.py's validate_row and
read_jsonl): implicit prompts, message lists, and every bad row named by its file, line and field,
including rows a chat template refuses."""
import contextlib
import io
import json
import os
import shlex
import subprocess
import sys
from unittest import mock

import pytest
from hypothesis import assume, example, given, strategies as st

from nanoalign.data import DataError, make_batch, read_jsonl, tokenize_pair, tokenize_rows, validate_row
from nanoalign.rows import check_labels, implicit_prompt, read_pair
from nanoalign.textfile import TO_JSONL, malformed, not_text, trailing_comma
from nanoalign.tasks import arith as task
from tests.helpers import FIX, TOK


# -- bad rows name the file, line and field --------------------------------------------------------
def write(tmp_path, text):
    p = tmp_path / "data.jsonl"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("text,pattern", [
    ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": \n', r":2: malformed JSON"),
    ('{"prompt": "a", "chosen": "b"}\n', r":1: missing field 'rejected'"),
    ('{"prompt": "a", "chosen": 3, "rejected": "c"}\n', r":1: field 'chosen' must be a string or a list"),
    ('\n{"prompt": "a", "chosen": "b", "rejected": "  "}\n', r":2: field 'rejected' is empty"),
    ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n[{"prompt": "a"}]\n', r":2: expected a JSON object, got list"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, text, pattern):
    path = write(tmp_path, text)
    with pytest.raises(DataError, match=r"data\.jsonl" + pattern):
        read_jsonl(path, "pref")


def test_prompt_longer_than_max_length(tmp_path):
    path = write(tmp_path, '{"prompt": "%s", "chosen": "b", "rejected": "c"}\n' % ("x" * 200))
    rows, _ = read_jsonl(path, "pref")
    with pytest.raises(DataError, match=r"data\.jsonl:1: field 'prompt' is \d+ tokens"):
        tokenize_rows(rows, task.build_tokenizer(), "pref", 64)


def test_skip_bad_rows_counts(tmp_path):
    path = write(tmp_path, '{"prompt": "a", "chosen": "b", "rejected": "c"}\nnot json\n'
                           '{"prompt": "a"}\n{"prompt": "%s", "chosen": "b", "rejected": "c"}\n' % ("x" * 200))
    rows, skipped = read_jsonl(path, "pref", skip_bad=True)
    ex, dropped = tokenize_rows(rows, task.build_tokenizer(), "pref", 64, skip_bad=True)
    assert (len(ex), skipped, dropped) == (1, 2, 1)


def test_fixtures_load_in_both_formats():
    tok = task.build_tokenizer()
    for kind, name in (("pref", "pref.jsonl"), ("sft", "sft.jsonl")):
        rows, _ = read_jsonl(os.path.join(FIX, name), kind)
        ex, _ = tokenize_rows(rows, tok, kind, 128)
        b = make_batch(ex, kind, tok.pad_id)
        assert len(ex) == 4 and b["n_tokens"] > 0
        # the response mask covers exactly response + EOS tokens
        key = "ids" if kind == "sft" else "chosen"
        resp = rows[0]["response" if kind == "sft" else "chosen"]
        assert b["mask"][0].sum().item() == len(tok.encode(resp)) + 1
        assert b["targets"][0][b["mask"][0].bool()].tolist() == ex[0][key][-(len(tok.encode(resp)) + 1):]


# -- a conversation without an assistant turn ------------------------------------------------------
def test_a_chosen_conversation_without_an_assistant_turn_names_the_row(tmp_path):
    f = tmp_path / "p.jsonl"
    good = {"prompt": "q", "chosen": "a", "rejected": "b"}
    bad = {"prompt": "q", "chosen": [{"role": "user", "content": "q"}], "rejected": "b"}
    f.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=rf"{f}:2: field 'chosen' is a message list with no assistant"):
        read_jsonl(str(f), "pref")
    rows, skipped = read_jsonl(str(f), "pref", skip_bad=True)
    assert len(rows) == 1 and skipped == 1


# -- validate_row, implicit prompts, read_jsonl ----------------------------------------------------
W = "rows.jsonl:7"                     # the `where` a row carries into every error message
USER = {"role": "user", "content": "hi"}
BOT = {"role": "assistant", "content": "hello"}


def error_of(row, kind, where=W):
    with pytest.raises(DataError) as e:
        validate_row(row, kind, where)
    return str(e.value)


@pytest.mark.parametrize("field", ["chosen", "rejected"])
def test_an_empty_response_is_an_error_naming_the_row_and_the_field(field):
    row = {"prompt": "p", "chosen": "c", "rejected": "r", field: "  "}
    assert error_of(row, "pref") == f"{W}: field '{field}' is empty"


def test_an_empty_prompt_string_is_allowed():
    assert validate_row({"prompt": "", "response": "r"}, "sft", W)["prompt"] == ""
    assert validate_row({"prompt": "", "chosen": "c", "rejected": "r"}, "pref", W)["prompt"] == ""


@pytest.mark.parametrize("bad, why", [
    ([], "is an empty list; a message list needs at least one {\"role\", \"content\"} message"),
    ([{"role": "user"}], ": message 1 has no string 'content' (it has none)"),
    ([{"content": "x"}], ": message 1 has no string 'role' (it has none)"),
    ([{"role": 1, "content": "x"}], ": message 1 has no string 'role' (got int)"),
    ([{"role": "user", "content": 3}], ": message 1 has no string 'content' (got int)"),
    (["hi"], ": message 1 is not a {\"role\", \"content\"} object, got str"),
    ([USER, {"role": "user", "content": None}], ": message 2 has no string 'content' (got NoneType)"),
    ([USER, BOT, [USER]], ": message 3 is not a {\"role\", \"content\"} object, got list"),
])
def test_a_bad_message_list_names_the_message_and_what_it_lacks(bad, why):
    """A list that is not a list of messages says what is wrong with it, not 'got list'."""
    msg = error_of({"prompt": bad, "response": "r"}, "sft")
    assert msg == f"{W}: field 'prompt'" + (" " if why.startswith("is") else "") + why


VALID_MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool"]),
                                       "content": st.text(max_size=5)})
JSON_VALUE = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=3),
                          lambda v: st.lists(v, max_size=3) | st.dictionaries(st.text(max_size=5), v,
                                                                              max_size=3),
                          max_leaves=6)
DEFECTS = [   # (a message that is not one, what the error says about message n)
    ({"role": "user"}, "has no string 'content' (it has none)"),
    ({"content": "x"}, "has no string 'role' (it has none)"),
    ({"role": "user", "content": 5}, "has no string 'content' (got int)"),
    ({"role": None, "content": "x"}, "has no string 'role' (got NoneType)"),
    ({"role": "user", "content": ["x"]}, "has no string 'content' (got list)"),
    ("hi", "is not a {\"role\", \"content\"} object, got str"),
    (7, "is not a {\"role\", \"content\"} object, got int"),
    (None, "is not a {\"role\", \"content\"} object, got NoneType"),
]


@given(st.lists(VALID_MESSAGE, max_size=4), st.sampled_from(DEFECTS), st.lists(JSON_VALUE, max_size=3),
       st.sampled_from(["prompt", "response"]))
def test_a_message_list_error_names_its_first_bad_message(good, defect, rest, field):
    """Whatever follows it, the error names the first message that is not a {"role", "content"}
    object of strings, by its number counted from 1, and what is wrong with it."""
    bad, why = defect
    row = {"prompt": "p", "response": [BOT], field: good + [bad] + rest}
    assert error_of(row, "sft") == f"{W}: field '{field}': message {len(good) + 1} {why}"


def _old_rule(v):    # which lists were accepted before the messages said what is wrong: unchanged
    return bool(v) and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                           and isinstance(m.get("content"), str) for m in v)


@given(st.lists(VALID_MESSAGE | JSON_VALUE, max_size=4))
@example([])
@example([USER, {"role": "user", "content": "", "name": 1}])
def test_which_message_lists_are_accepted_is_unchanged(v):
    """A list prompt is accepted, as given, exactly when it is a non-empty list of objects with a
    string 'role' and 'content' (any role, any extra keys, empty content too); otherwise the error
    names the field and what is wrong inside the list, not that it is a list."""
    row = {"prompt": v}
    if _old_rule(v):
        assert validate_row(row, "prompt", W)["prompt"] == v
    else:
        msg = error_of(row, "prompt")
        assert msg.startswith(f"{W}: field 'prompt'") and "must be a string or a list" not in msg


def test_a_text_field_of_another_type_names_that_type():
    assert error_of({"prompt": "p", "response": 5}, "sft").endswith("messages, got int")
    assert error_of({"prompt": {"a": 1}}, "prompt").startswith(f"{W}: field 'prompt' must be")


def test_messages_are_kept_as_given():
    row = {"prompt": [USER], "chosen": [USER, BOT], "rejected": "r", "extra": 1}
    out = validate_row(row, "pref", W)
    assert out == row and out is not row


@pytest.mark.parametrize("kind, fields, name, other", [
    ("pref", ("prompt", "chosen", "rejected"), "preference",
     "; or, with no prompt, chosen and rejected conversations that begin with it"),
    ("sft", ("prompt", "response"), "sft", "; or prompt, completion (TRL's); or messages, ending with the answer"),
    ("prompt", ("prompt",), "prompt", "; or, with no prompt, chosen and rejected conversations that begin with it"),
])
def test_a_missing_field_names_it_and_the_fields_the_kind_needs(kind, fields, name, other):
    """And the kind's other shape, if it has one: a researcher whose {"messages"} SFT row lacked
    the field, or whose implicit-prompt row lacked 'rejected', was told of prompt and response only."""
    full = {f: "x" for f in fields}
    for f in fields:
        row = {k: v for k, v in full.items() if k != f}
        if kind == "pref" and f == "prompt":
            continue                               # no prompt: TRL's implicit prompt, tested below
        needs = f"a {name} row needs {', '.join(fields)}{other}"
        assert error_of(row, kind) == f"{W}: missing field '{f}' ({needs})"


NEEDS = {"pref": "a preference row needs prompt, chosen, rejected; or, with no prompt, chosen and rejected "
                 "conversations that begin with it",
         "sft": "a sft row needs prompt, response; or prompt, completion (TRL's); or messages, ending with the answer",
         "prompt": "a prompt row needs prompt; or, with no prompt, chosen and rejected conversations that begin "
                   "with it"}


@pytest.mark.parametrize("kind, row, field, key, meant", [
    ("pref", {"prompt": "q", "chosen": "a", "rejeted": "b"}, "rejected", "rejeted", "rejected"),
    ("pref", {"chosen": "a", "rejeted": "b"}, "rejected", "rejeted", "rejected"),   # not 'prompt', which it lacks too
    ("pref", {"Prompt": "q", "chosen": "a", "rejected": "b"}, "prompt", "Prompt", "prompt"),   # not an implicit prompt
    ("pref", {"promt": "q", "chosen": "Q: a", "rejected": "Q: b"}, "prompt", "promt", "prompt"),
    ("sft", {"prompt": "q", "respone": "a"}, "response", "respone", "response"),
    ("sft", {"prompt": "q", "completon": "a"}, "response", "completon", "completion"),   # the kind's other shape
    ("sft", {"mesages": [USER, BOT]}, "prompt", "mesages", "messages"),
    ("prompt", {"promtp": "q"}, "prompt", "promtp", "prompt"),
    ("prompt", {"chosen": "Q: a", "rejectd": "Q: b"}, "prompt", "rejectd", "rejected"),
])
def test_a_missing_field_names_a_key_that_looks_like_it_misspelled(kind, row, field, key, meant):
    """A row with 'rejeted' was told "missing field 'rejected'" and no more; one with 'promt' beside
    chosen and rejected was read as an implicit prompt (its own prompt ignored)."""
    assert error_of(row, kind) == (f"{W}: missing field '{field}' ({NEEDS[kind]}); the row has '{key}': "
                                   f"did you mean '{meant}'?")


def misspell(name, edit, at):
    at %= len(name)
    return {"drop": name[:at] + name[at + 1:], "double": name[:at] + name[at] + name[at:],
            "swap": name[:at] + name[at + 1:at + 2] + name[at] + name[at + 2:] if at + 1 < len(name) else name[:-1],
            "capital": name[:at] + name[at].upper() + name[at + 1:],
            "split": name[:at or 1] + "_" + name[at or 1:],     # inside the name: 'rej_ected'
            "space": name + " " if at % 2 else " " + name}[edit]   # a stray space: 'prompt '


FIELDS = {"pref": ("prompt", "chosen", "rejected"), "sft": ("prompt", "response"), "prompt": ("prompt",)}


@given(st.sampled_from([(k, f) for k, fs in FIELDS.items() for f in fs]),
       st.sampled_from(["drop", "double", "swap", "capital", "split", "space"]), st.integers(0, 9),
       st.sampled_from(["id", "score", "source", "prompt_id", "score_chosen", "chosen_rating", "meta"]))
@example(("pref", "rejected"), "drop", 3, "id")            # 'rejeted'
@example(("sft", "response"), "split", 3, "prompt_id")      # 'res_ponse': its words are no fields
@example(("pref", "prompt"), "space", 1, "id")              # 'prompt ': was read as an implicit prompt
def test_any_field_misspelled_by_one_letter_is_named(kind_field, edit, at, other):
    """A field's key with one letter dropped, doubled, swapped with the next or capitalized, a
    stray '_' inside it ('res_ponse', whose words are no fields) or a stray space at an end
    ('prompt '), is named as the field meant; a key
    that is no misspelling (an id, a score, a field about the field, such as UltraFeedback's
    'prompt_id' and 'score_chosen') is named for none."""
    kind, field = kind_field
    typo = misspell(field, edit, at)
    assume(typo != field)
    row = {f: "Q: x" for f in FIELDS[kind] if f != field}
    msg = error_of({**row, typo: "Q: y", other: 1}, kind)
    assert msg == f"{W}: missing field '{field}' ({NEEDS[kind]}); the row has '{typo}': did you mean '{field}'?"
    if (kind, field) != ("pref", "prompt"):     # without 'promt', a row of chosen and rejected has an implicit prompt
        assert error_of({**row, other: 1}, kind) == f"{W}: missing field '{field}' ({NEEDS[kind]})"


@pytest.mark.parametrize("message, key, meant", [
    ({"role": "user", "contnet": "hi"}, "contnet", "content"),
    ({"rloe": "user", "content": "hi"}, "rloe", "role"),
    ({"Content": "hi", "role": "user"}, "Content", "content"),
])
def test_a_message_missing_role_or_content_names_a_key_that_looks_like_it_misspelled(message, key, meant):
    assert error_of({"prompt": [USER, message], "response": "r"}, "sft") == (
        f"{W}: field 'prompt': message 2 has no string '{meant}' (it has none); the message has '{key}': "
        f"did you mean '{meant}'?")
    other = {k: v for k, v in message.items() if k != key} | {"name": "x", "tool_calls": [], "weight": 1}
    assert error_of({"prompt": [USER, other], "response": "r"}, "sft") == (   # no key near it: no guess
        f"{W}: field 'prompt': message 2 has no string '{meant}' (it has none)")


@pytest.mark.parametrize("message, error", [
    ({"role": 1, "rloe": "user", "content": "hi"}, "no string 'role' (got int)"),      # it has one: no guess
    ({"role": "user", "content": None, "Content": "hi"}, "no string 'content' (got NoneType)"),
    ({"role_name": "user", "content": "hi"}, "no string 'role' (it has none)"),      # a key about the role
    ({"role": "user", "content_type": "text", "parts": ["hi"]}, "no string 'content' (it has none)"),
])
def test_a_message_error_guesses_no_misspelling_where_the_key_is_there_or_a_key_is_about_it(message, error):
    """A key that is there with the wrong type is what is wrong, not a misspelling of it; a key of
    several words one of which is 'role' or 'content' (ChatGPT's 'content_type') is a field about it,
    no misspelling: the error names what the message lacks, and guesses no key."""
    msg = error_of({"prompt": [USER, message], "response": "r"}, "sft")
    assert msg == f"{W}: field 'prompt': message 2 has {error}"


@pytest.mark.parametrize("field", ["chosen", "rejected"])
def test_a_response_list_needs_an_assistant_message(field):
    row = {"prompt": [USER], "chosen": [USER, BOT], "rejected": [USER, BOT], field: [USER]}
    assert error_of(row, "pref") == (f"{W}: field '{field}' is a message list with no assistant "
                                     f"message; the response is the last assistant message")
    row[field] = [USER, {"role": "assistant", "content": "x"}]          # after the prompt's turns, too
    assert validate_row(row, "pref", W)[field] == row[field]


AFTER_THE_ANSWER = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "tool", "system"]),
                                                   "content": st.text(max_size=5)}), min_size=1, max_size=3)


@given(st.lists(VALID_MESSAGE, max_size=3), AFTER_THE_ANSWER,
       st.sampled_from([("pref", "chosen"), ("pref", "rejected"), ("sft", "response")]))
def test_a_response_list_that_goes_on_after_its_answer_is_a_bad_row(before, after, kind_field):
    """The response of a message list is its last assistant message; a user or tool turn after it
    would not be trained (TRL would train it, as text the policy writes), so the row would train
    something other than the file says: an error naming the field and the turn, not a silent drop."""
    kind, field = kind_field
    row = {"prompt": "p", "chosen": "c", "rejected": "r"} if kind == "pref" else {"prompt": "p", "response": "r"}
    row["prompt"] = before or "p"              # the turns before the answer are the prompt's
    row[field] = before + [BOT] + after
    msg = error_of(row, kind)
    assert msg.startswith(f"{W}: field '{field}' ends with a '{after[-1]['role']}' message")
    assert f"(message {len(before) + 1})" in msg and f"from message {len(before) + 2}" in msg
    row[field] = before + [BOT]                                  # ended at its answer: a good row
    assert validate_row(row, kind, W)[field] == row[field]


def test_an_implicit_prompt_response_that_goes_on_after_its_answer_counts_the_whole_conversation():
    """Without a 'prompt', the messages are numbered in the conversation the file gives: it once
    said that the two differ before their last answer, which they do not."""
    c = [USER, BOT, {"role": "user", "content": "thanks"}]
    assert error_of({"chosen": c, "rejected": [USER, {"role": "assistant", "content": "no"}]}, "pref") \
        .startswith(f"{W}: field 'chosen' ends with a 'user' message: the response is the last "
                    f"assistant message (message 2), and the turns after it, from message 3,")


@pytest.mark.parametrize("kind, good, bad", [
    ("pref", {"prompt": "q", "chosen": "a", "rejected": "b"},
     {"prompt": "q", "chosen": [BOT, {"role": "user", "content": "thanks"}], "rejected": "b"}),
    ("sft", {"prompt": "q", "response": "a"},
     {"prompt": "q", "response": [BOT, {"role": "tool", "content": "{}"}]}),
])
def test_a_response_list_that_goes_on_after_its_answer_names_the_file_and_line(tmp_path, kind, good, bad):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    field = "chosen" if kind == "pref" else "response"
    with pytest.raises(DataError, match=rf"{f}:2: field '{field}' ends with a"):
        read_jsonl(str(f), kind)
    rows, skipped = read_jsonl(str(f), kind, skip_bad=True)      # --skip_bad_rows
    assert rows == [{**good, "_where": f"{f}:1"}] and skipped == 1


@pytest.mark.parametrize("kind, field", [("pref", "chosen"), ("pref", "rejected"), ("sft", "response")])
@pytest.mark.parametrize("content", ["", "  \n"])
def test_a_response_list_whose_answer_is_empty_is_an_error(kind, field, content):
    """The response of a message list is its last assistant message: empty, it is the empty response
    that a string field ('is empty') or an sft 'messages' row refuses, not a row to train on."""
    row = {"prompt": "p", "chosen": "c", "rejected": "r"} if kind == "pref" else {"prompt": "p", "response": "r"}
    row[field] = [USER, {"role": "assistant", "content": content}]
    assert error_of(row, kind) == (f"{W}: field '{field}' has an empty last assistant message (the "
                                   f"response)")
    row[field] = [USER, {"role": "assistant", "content": content}, USER, BOT]   # an earlier one may be
    row["prompt"] = row[field][:-1]
    assert validate_row(row, kind, W)[field] == row[field]


def test_an_sft_response_list_needs_an_assistant_message():
    assert error_of({"prompt": "p", "response": [USER]}, "sft").startswith(
        f"{W}: field 'response' is a message list with no assistant")
    assert validate_row({"prompt": "p", "response": [BOT]}, "sft", W)["response"] == [BOT]


# -- an explicit prompt, and a response list with turns before its answer --------------------------
Q1, A1 = {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}
Q2, A2 = {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}
RESPONSE_FIELDS = [("pref", "chosen"), ("pref", "rejected"), ("sft", "response"), ("sft", "completion")]


def row_with(kind, field, prompt, response):
    row = {"prompt": prompt, "chosen": "c", "rejected": "r"} if kind == "pref" else {"prompt": prompt}
    return {**row, field: response}


@pytest.mark.parametrize("kind, field", RESPONSE_FIELDS)
@pytest.mark.parametrize("prompt, response, at", [
    ("What is 2+2?", [{"role": "user", "content": "Tell me a joke"}, {"role": "assistant", "content": "4"}], 1),
    ([Q1], [Q1, A1, Q2, A2], 2),              # trained as Q1 -> A2, A1 and Q2 dropped
    ([Q1, A1, Q2], [Q2, A2], 1),
    ("Q1", [A1, A2], 1),
])
def test_a_response_list_whose_turns_before_its_answer_are_not_the_prompt_is_a_bad_row(kind, field, prompt,
                                                                                       response, at):
    """Only the answer is trained, after 'prompt': turns before it that are not the prompt's own
    were dropped without a word (a joke request answered '4'; Q1 answered with A2). Now an error
    naming the field and the first message that is not the prompt's, as the implicit prompt's is."""
    assert error_of(row_with(kind, field, prompt, response), kind) == (
        f"{W}: field '{field}': the messages before its answer are not the 'prompt' field's conversation "
        f"(from message {at}), and would be ignored (the answer goes after 'prompt'); give "
        f"'{field}' as the answer alone, or as the prompt's messages then the answer")


PROMPT = st.one_of(st.sampled_from(["Q1", "Q2"]),
                   st.lists(st.sampled_from([Q1, A1, Q2, {"role": "system", "content": "Q1"}]),
                            min_size=1, max_size=3))
BEFORE = st.lists(st.sampled_from([Q1, A1, Q2, A2, {"role": "system", "content": "Q1"}]), max_size=3)


@given(PROMPT, st.one_of(BEFORE, st.just("the prompt")), st.sampled_from(RESPONSE_FIELDS))
@example("Q1", [Q1], ("pref", "chosen"))              # a string prompt is its one user message
@example("Q1", [{**Q1, "name": "x"}], ("sft", "response"))
def test_a_response_list_is_read_exactly_when_the_turns_before_its_answer_are_none_or_the_prompt(
        prompt, before, kind_field):
    """Accepted, as given, exactly when the messages before the answer are none or the prompt's
    messages (a string prompt as the chat template gets it: one user message, model/tokenizer.py
    as_messages); otherwise a bad row naming the field."""
    from model.tokenizer import as_messages
    kind, field = kind_field
    if before == "the prompt":
        before = as_messages(prompt)
    row = row_with(kind, field, prompt, before + [A2])
    if before in ([], as_messages(prompt)):
        out = validate_row(row, kind, W)
        assert out["prompt"] == prompt and out["response" if field == "completion" else field] == before + [A2]
    else:
        assert error_of(row, kind).startswith(f"{W}: field '{field}': the messages before its answer "
                                              f"are not the 'prompt' field's conversation")


def test_a_response_list_that_repeats_the_prompt_names_the_file_and_line(tmp_path):
    f = tmp_path / "p.jsonl"
    good = {"prompt": [Q1], "chosen": [Q1, A1], "rejected": [A2]}        # the fixture's shape, and TRL's
    bad = {"prompt": [Q1], "chosen": [Q1, A1, Q2, A2], "rejected": [A2]}
    f.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=rf"^{f}:2: field 'chosen': the messages before its answer"):
        read_jsonl(str(f), "pref")
    rows, skipped = read_jsonl(str(f), "pref", skip_bad=True)
    assert rows == [{**good, "_where": f"{f}:1"}] and skipped == 1


def test_implicit_prompt_of_two_strings_keeps_the_space_with_the_responses():
    row = {"chosen": "Q: 2+2? A: four", "rejected": "Q: 2+2? A: 5", "score": 3}
    out = validate_row(row, "pref", W)
    assert (out["prompt"], out["chosen"], out["rejected"]) == ("Q: 2+2? A:", " four", " 5")
    assert out["score"] == 3


def test_implicit_prompt_of_two_strings_splits_between_words():
    """TRL's split, at the first difference, fell inside a word: the prompt "Translate 'cat' to
    French. Ch" went to the chat template as the user's message, "at." and "ien." were the answers.
    The split goes back to the word's start (a space before it goes with the answers)."""
    out = validate_row({"chosen": "Translate 'cat' to French. Chat.",
                        "rejected": "Translate 'cat' to French. Chien."}, "pref", W)
    assert (out["prompt"], out["chosen"], out["rejected"]) == ("Translate 'cat' to French.", " Chat.", " Chien.")
    assert implicit_prompt("Q:\nabc", "Q:\nabd", W) == ("Q:\n", "abc", "abd")    # no space: split after it
    assert error_of({"chosen": "abc", "rejected": "abd"}, "pref") == (     # no whole word: no prompt
        f"{W}: no 'prompt' field, and 'chosen' and 'rejected' share only the start of a word ('ab'), no "
        f"whole words to take as the prompt")


def test_implicit_prompt_of_two_conversations_is_their_shared_leading_messages():
    sys = {"role": "system", "content": "be brief"}
    c = [sys, USER, {"role": "assistant", "content": "yes"}]
    r = [sys, USER, {"role": "assistant", "content": "no"}]
    out = validate_row({"chosen": c, "rejected": r}, "pref", W)
    assert out["prompt"] == [sys, USER] and out["chosen"] == c[2:] and out["rejected"] == r[2:]


def test_implicit_prompt_of_multi_turn_conversations_stops_at_the_first_difference():
    u2 = {"role": "user", "content": "and?"}
    c = [USER, {"role": "assistant", "content": "a1"}, u2, {"role": "assistant", "content": "a2"}]
    r = [USER, {"role": "assistant", "content": "b1"}, u2, {"role": "assistant", "content": "b2"}]
    assert implicit_prompt(c, r, W) == ([USER], c[1:], r[1:])


@pytest.mark.parametrize("c, r, field", [
    ("Q: hi", "Q: hi there", "chosen"), ("Q: hi there", "Q: hi", "rejected"),
    ([USER, BOT], [USER, BOT, USER, BOT], "chosen"), ([USER, BOT, USER, BOT], [USER, BOT], "rejected"),
])
def test_implicit_prompt_when_one_side_is_a_prefix_of_the_other(c, r, field):
    msg = error_of({"chosen": c, "rejected": r}, "pref")    # that side's response is empty: a bad row
    assert msg.startswith(f"{W}: field '{field}' ")


@pytest.mark.parametrize("c, r, what", [
    ("abc", "xbc", "text"), ([USER, BOT], [BOT, USER], "message"),
])
def test_implicit_prompt_needs_a_shared_beginning(c, r, what):
    assert error_of({"chosen": c, "rejected": r}, "pref") == (
        f"{W}: no 'prompt' field, and 'chosen' and 'rejected' share no leading {what} to take as "
        f"the prompt")


def test_implicit_prompt_of_a_string_and_a_list_is_an_error():
    assert error_of({"chosen": "abc", "rejected": [USER, BOT]}, "pref") == (
        f"{W}: no 'prompt' field, and 'chosen' / 'rejected' are not both strings or both message lists")


def test_implicit_prompt_checks_each_field_first():
    assert error_of({"chosen": " ", "rejected": "x"}, "pref") == f"{W}: field 'chosen' is empty"
    assert error_of({"chosen": "x", "rejected": 3}, "pref").startswith(f"{W}: field 'rejected' must")


def test_an_implicit_prompt_response_without_assistant_turn_is_an_error():
    c, r = [USER, {"role": "user", "content": "a"}], [USER, {"role": "user", "content": "b"}]
    assert "field 'chosen' is a message list with no assistant message" in \
        error_of({"chosen": c, "rejected": r}, "pref")


def test_sft_messages_row_takes_the_last_assistant_message_as_response():
    msgs = [USER, BOT, {"role": "user", "content": "more"}, {"role": "assistant", "content": "ok"}]
    out = validate_row({"messages": msgs, "id": 9}, "sft", W)
    assert out["prompt"] == msgs[:-1] and out["response"] == "ok" and out["id"] == 9


@pytest.mark.parametrize("msgs, why", [
    ([USER], "must end with an assistant message"),
    ("just text", "must end with an assistant message"),
    ([USER, {"role": "assistant", "content": "  "}], "has an empty final assistant message"),
    ([USER, BOT, USER, {"role": "assistant", "content": ""}], "has an empty final assistant message"),
])
def test_sft_messages_rows_must_end_with_a_real_answer(msgs, why):
    assert error_of({"messages": msgs}, "sft") == f"{W}: field 'messages' {why}"


def test_sft_messages_must_be_messages():
    assert error_of({"messages": [1]}, "sft") == (
        f"{W}: field 'messages': message 1 is not a {{\"role\", \"content\"}} object, got int")
    assert error_of({"messages": []}, "sft") == (
        f"{W}: field 'messages' is an empty list; a message list needs at least one "
        f"{{\"role\", \"content\"}} message")
    assert error_of({"messages": [USER, {"role": "assistant"}]}, "sft") == (
        f"{W}: field 'messages': message 2 has no string 'content' (it has none)")
    assert error_of({"messages": 3}, "sft") == (
        f"{W}: field 'messages' must be a string or a list of {{\"role\", \"content\"}} messages, got int")


def test_a_row_must_be_an_object_and_a_kind_must_be_readable():
    assert error_of([1, 2], "pref") == f"{W}: expected a JSON object, got list"
    assert error_of({"prompt": "p"}, "mo") == f"{W}: 'mo' examples are built by a method, not read from a file"
    msg = error_of({"prompt": "p"}, "nope")
    assert msg == "unknown data kind 'nope'; the kinds are sft, pref, prompt, mo"


def test_read_jsonl_numbers_lines_skips_blank_ones_and_counts_bad_rows(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"prompt": "a"}) + "\n\n   \n" + "{oops\n" + json.dumps({"x": 1}) + "\n"
                 + json.dumps({"prompt": "b"}) + "\n")
    rows, skipped = read_jsonl(str(f), "prompt", skip_bad=True)
    assert [(r["prompt"], r["_where"]) for r in rows] == [("a", f"{f}:1"), ("b", f"{f}:6")]
    assert skipped == 2
    with pytest.raises(DataError) as e:
        read_jsonl(str(f), "prompt")
    assert str(e.value).startswith(f"{f}:4: malformed JSON (") and "at column 2)" in str(e.value)


def test_read_jsonl_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match=r"nope\.jsonl: cannot open \(No such file or directory\)"):
        read_jsonl(str(missing), "prompt")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"x": 1}) + "\n" + "\n" + json.dumps({"prompt": 5}) + "\n")
    with pytest.raises(DataError) as e:
        read_jsonl(str(bad), "prompt")
    first = str(e.value)
    assert first.startswith(f"{bad}:1: missing field 'prompt'")
    # every row bad under skip_bad: the error says why, as train.py's start does for skipped rows
    # (it said only 'no usable rows', and train.py never got to name them)
    with pytest.raises(DataError) as e:
        read_jsonl(str(bad), "prompt", skip_bad=True, bad=[])
    assert str(e.value) == f"{bad}: no usable rows: all 2 are bad, the first {first}", str(e.value)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n \n")
    with pytest.raises(DataError) as e:
        read_jsonl(str(empty), "prompt", skip_bad=True)
    assert str(e.value) == f"{empty}: no usable rows: the file is empty (or blank lines only)"


@given(st.dictionaries(st.text(max_size=5), st.text(max_size=5) | st.integers(), max_size=3), st.booleans(),
       st.sampled_from(["\n", "\r\n", ""]))
@example({"prompt": "a"}, True, "\n")
@example({"prompt": "caf\u00e9 \u4f60\u597d"}, False, "\r\n")        # the column counts characters
def test_a_json_line_cut_short_is_malformed_at_the_column_after_its_end(scratch, row, ascii_only, newline):
    """A line missing its closing brace is malformed at its end: json.loads once read the line with
    its newline, so the error was 'Expecting ',' delimiter at column 1' (of the line after it)."""
    text = json.dumps(row, ensure_ascii=ascii_only)[:-1]
    f = scratch / "cut.jsonl"
    f.write_bytes((json.dumps({"prompt": "q"}) + "\n" + text + newline).encode("utf-8"))
    with pytest.raises(DataError) as e:
        read_jsonl(str(f), "prompt")
    msg = str(e.value)
    assert msg.startswith(f"{f}:2: malformed JSON (Expecting ") and msg.endswith(f" at column {len(text) + 1})")


# -- encodings: UTF-8 whatever the platform, a BOM is fine, anything else names the line ------------
@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A directory for the property tests below (a function-scoped tmp_path is one per test, not
    one per hypothesis example)."""
    return tmp_path_factory.mktemp("encodings")


TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)    # any text UTF-8 can hold
ASCII = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e, blacklist_characters='"\\'),
                max_size=5)


def jsonl(prompts):
    return "".join(json.dumps({"prompt": p}, ensure_ascii=False) + "\n" for p in prompts)


@given(st.lists(TEXT, min_size=1, max_size=4), st.sampled_from(["\n", "\r\n"]))
@example(["caf\u00e9", "\u4f60\u597d", "\ufeffx"], "\r\n")
def test_a_utf8_file_reads_the_same_with_or_without_a_byte_order_mark(scratch, prompts, newline):
    """UTF-8, read as UTF-8 (not the platform's default encoding); a leading byte order mark, which
    Windows editors write, is dropped rather than read as malformed JSON."""
    f = scratch / "bom.jsonl"
    data = jsonl(prompts).replace("\n", newline).encode("utf-8")
    f.write_bytes(data)
    plain, _ = read_jsonl(str(f), "prompt")
    f.write_bytes(b"\xef\xbb\xbf" + data)
    with_bom, skipped = read_jsonl(str(f), "prompt")
    assert [r["prompt"] for r in with_bom] == [r["prompt"] for r in plain] == prompts
    assert [r["_where"] for r in with_bom] == [f"{f}:{i}" for i in range(1, len(prompts) + 1)]
    assert skipped == 0


@given(st.lists(TEXT, min_size=1, max_size=3), st.sampled_from(["utf-16", "utf-16-le", "utf-16-be"]),
       st.booleans())
def test_a_utf16_file_is_an_error_that_says_so(scratch, prompts, encoding, skip_bad):
    """A UTF-16 file (Windows PowerShell's `>`), with or without a byte order mark, is one error
    naming the file and saying what to do, with --skip_bad_rows too: every line of it is bad."""
    f = scratch / "utf16.jsonl"
    f.write_bytes(jsonl(prompts).encode(encoding))
    with pytest.raises(DataError) as e:
        read_jsonl(str(f), "prompt", skip_bad=skip_bad)
    assert str(e.value) == (f"{f}:1: the file looks like UTF-16 (what Windows PowerShell's '>' "
                            f"writes), not UTF-8; re-save it as UTF-8")


@given(st.dictionaries(TEXT, TEXT | st.lists(TEXT, max_size=2), max_size=3), st.sampled_from(["", " ", "\t"]),
       st.booleans())
@example({"\x00": "\x00"}, "", True)          # NUL characters, escaped in JSON text
@example({"a": "b"}, "", False)                 # '"' at bytes 1 and 3: equal, but not NULs
@example({"{": "b"}, "", False)                 # '{' at bytes 0 and 2: equal, but not NULs
def test_a_utf8_json_line_is_always_text(row, indent, ascii_only):
    """Whatever a JSON object holds, its line in UTF-8 is text: no format, UTF-16 or binary guess
    fires on a JSONL file's first line (JSON writes a NUL character as \\u0000, never a NUL byte)."""
    raw = (indent + json.dumps(row, ensure_ascii=ascii_only) + "\n").encode("utf-8")
    assert not_text(raw) is None, raw


@pytest.mark.parametrize("head, what, todo", [
    (b"PAR1\x15\x04\x15\x00", "a Parquet file", "pandas.read_parquet"),      # a datasets export
    (b"\x1f\x8b\x08\x00\x00\x00\x00\x00", "gzip-compressed", "gunzip"),     # rows.jsonl.gz
    (b"ARROW1\x00\x00\xff\xff", "an Arrow file", "Dataset.from_file"),        # datasets' cache
    (b"PK\x03\x04\x14\x00\x00\x00", "a zip archive", "unzip"),
    (b"\x80\x04\x95\x00\x00", "binary", None),                                # anything else
])
@pytest.mark.parametrize("skip_bad", [False, True])
def test_a_file_that_is_not_text_is_one_error_saying_what_it_is(scratch, head, what, todo, skip_bad):
    """A Parquet, gzip, Arrow or zip file handed over as --train_data is one error naming the file,
    what it is and how to make JSONL of it; other binary data is said to be binary. None of them is
    UTF-16, which the NUL bytes in them once made it look like."""
    f = scratch / "rows.jsonl"
    f.write_bytes(head + bytes(range(256)) + b"\n" + b'{"prompt": "x"}\n')
    with pytest.raises(DataError) as e:
        read_jsonl(str(f), "prompt", skip_bad=skip_bad)
    msg = str(e.value)
    assert msg.startswith(f"{f}:1: ") and what in msg and "not UTF-8 text" in msg, msg
    assert "UTF-16" not in msg and (todo in msg if todo else msg.endswith(": binary data (NUL bytes), "
                                                                       "not UTF-8 text")), msg


# -- a text file that is not JSONL: a JSON document, or CSV ----------------------------------------
PREF_ROWS = [{"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
             {"prompt": [{"role": "user", "content": "caf\u00e9?"}], "chosen": "Oui, 5", "rejected": "Non"}]
DOCUMENT = "a JSON document, not JSONL (one JSON object per line); convert it, e.g. python -c "
CSV = "CSV (comma-separated text), not JSONL (one JSON object per line); convert it, e.g. python -c "
OBJECTS = ("several JSON objects, each written over several lines (what jq prints without -c), not JSONL (one "
           "JSON object per line); convert it, e.g. python -c ")


def converted(msg, f, tmp_path):
    """The rows read from what the error's conversion command writes, run as the error gives it."""
    cmd = msg.split("e.g. ", 1)[1]
    assert cmd.startswith("python -c ") and cmd.endswith(f" {shlex.quote(str(f))} > rows.jsonl"), cmd
    subprocess.run(shlex.quote(sys.executable) + cmd[len("python"):], shell=True, cwd=tmp_path, check=True)
    return [{k: v for k, v in r.items() if k != "_where"} for r in read_jsonl(str(tmp_path / "rows.jsonl"), "pref")[0]]


@pytest.mark.parametrize("text, what, rows", [
    (json.dumps(PREF_ROWS, indent=2), DOCUMENT, PREF_ROWS),                   # json.dump(rows, f, indent=2)
    (json.dumps(PREF_ROWS) + "\n", DOCUMENT, PREF_ROWS),                       # json.dump(rows, f): one line
    ("[" + ",\n".join(json.dumps(r) for r in PREF_ROWS) + "]\n", DOCUMENT, PREF_ROWS),   # an array, a row a line
    (json.dumps(PREF_ROWS[0], indent=2) + "\n", DOCUMENT, PREF_ROWS[:1]),     # one object, pretty-printed
    ('{"prompt": "What is 2+2?",\n "chosen": "4", "rejected": "5"}\n', DOCUMENT, PREF_ROWS[:1]),   # wrapped by hand
    ("".join(json.dumps(r, indent=2, ensure_ascii=False) + "\n" for r in PREF_ROWS), OBJECTS, PREF_ROWS),  # jq . f
], ids=["array", "array-on-one-line", "array-a-row-a-line", "object", "object-wrapped", "objects-back-to-back"])
@pytest.mark.parametrize("skip_bad", [False, True])
def test_a_json_document_is_one_error_saying_so_and_how_to_convert_it(tmp_path, text, what, rows, skip_bad):
    """A pretty-printed JSON array or an object over several lines was 'malformed JSON (Expecting
    value at column 1)' on line 1 (and with --skip_bad_rows, every line a bad row), and an array on
    one line 'expected a JSON object, got list' (with --skip_bad_rows, 'no usable rows'): it is one
    error saying what the file is, with a command that makes JSONL of it (run here: it gives the rows).
    Objects back to back, each over several lines (jq's output), are said to be that: json.load,
    the command for one object, fails on them ('Extra data')."""
    f = tmp_path / "rows.json"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_jsonl(str(f), "pref", skip_bad=skip_bad)
    msg = str(e.value)
    assert msg.startswith(f"{f}:1: the file looks like {what}"), msg
    assert converted(msg, f, tmp_path) == rows


@pytest.mark.parametrize("skip_bad", [False, True])
@pytest.mark.parametrize("blank", ["", "\n \r\n"])
def test_a_csv_file_is_one_error_saying_so_and_how_to_convert_it(tmp_path, skip_bad, blank):
    """Told at its first line that is not blank, with a command that skips the blank ones."""
    f = tmp_path / "rows.csv"
    f.write_text(blank + 'prompt,chosen,rejected\nWhat is 2+2?,4,5\n"Say ""hi"", please",Hi,"No, thanks"\n',
                 encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_jsonl(str(f), "pref", skip_bad=skip_bad)
    msg = str(e.value)
    assert msg.startswith(f"{f}:{blank.count(chr(10)) + 1}: the file looks like {CSV}"), msg
    assert converted(msg, f, tmp_path) == [PREF_ROWS[0], {"prompt": 'Say "hi", please', "chosen": "Hi",
                                                         "rejected": "No, thanks"}]


@given(st.lists(st.dictionaries(TEXT, TEXT | st.lists(TEXT, max_size=2), min_size=1, max_size=3),
                min_size=1, max_size=3), st.sampled_from([None, 0, 2, "\t"]),
       st.sampled_from(["array", "object", "objects"]), st.lists(st.sampled_from(["", " ", "\t", "\r"]), max_size=3))
def test_any_pretty_printed_json_document_is_said_to_be_one(scratch, rows, indent, shape, blanks):
    """Whatever it holds, a JSON array (on one line or several), an object written over several
    lines, or such objects back to back, is said to be what it is, at its first line that is not
    blank, not malformed JSON or a row that is no object there; and its command gives back its rows."""
    assume(shape == "array" or indent is not None)       # an object on one line is a JSONL row
    rows = rows[:1] if shape == "object" else rows
    text = json.dumps(rows, indent=indent, ensure_ascii=False) if shape == "array" else "\n".join(
        json.dumps(r, indent=indent, ensure_ascii=False) for r in rows)
    f = scratch / "doc.json"
    f.write_text("".join(b + "\n" for b in blanks) + text, encoding="utf-8", newline="")
    with pytest.raises(DataError) as e:
        read_jsonl(str(f), "pref")
    what = OBJECTS if len(rows) > 1 and shape == "objects" else DOCUMENT
    assert str(e.value).startswith(f"{f}:{len(blanks) + 1}: the file looks like {what}"), str(e.value)
    assert command_output(str(e.value), f) == rows


def command_output(msg, f):
    """The JSON values, a line each, that the error's python -c command prints, run here in-process."""
    code = msg.split(' e.g. python -c "', 1)[1].removesuffix(f'" {shlex.quote(str(f))} > rows.jsonl')
    out = io.StringIO()
    with mock.patch.object(sys, "argv", ["-c", str(f)]), contextlib.redirect_stdout(out):
        exec(code, {})
    return [json.loads(line) for line in out.getvalue().splitlines()]


@pytest.mark.parametrize("line1, error", [
    ('{"prompt": "a"', "malformed JSON (Expecting ',' delimiter at column 15)"),     # a row missing its '}'
    ('{"prompt": "a"} X', "malformed JSON (Extra data at column 17)"),              # then more on its line
    ('{"prompt": "a", "chosen": "b, c"', "malformed JSON (Expecting ',' delimiter at column 33)"),
    ('"prompt": "a", "chosen": "b"}', "malformed JSON (Extra data at column 9)"),  # commas, and a '}'
    ("prompt chosen rejected", "malformed JSON (Expecting value at column 1)"),     # no commas
    ('["x"]', "expected a JSON object, got list"),                  # an array row among object rows
    ('{"prompt": "a"} {"prompt": "b"}', "malformed JSON (Extra data at column 17)"),  # two rows on one line
    ('"prompt": "a", "chosen": "{b"', "malformed JSON (Extra data at column 9)"),    # commas, and a '{'
    ('{"prompt": "a"   ', "malformed JSON (Expecting ',' delimiter at column 18)"),  # spaces before its end
    ('[{"prompt": "a", "chosen": "b", "rejected": "c"}]', "expected a JSON object, got list"),
])
def test_a_jsonl_file_whose_first_row_is_malformed_keeps_its_json_error(tmp_path, line1, error):
    """Only a file that is a JSON document or CSV is said to be one: a JSONL file whose first row has
    a typo, followed by good rows, is told of the typo."""
    f = tmp_path / "rows.jsonl"
    f.write_text(line1 + "\n" + "".join(json.dumps(r) + "\n" for r in PREF_ROWS), encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_jsonl(str(f), "pref")
    assert str(e.value) == f"{f}:1: {error}"
    assert len(read_jsonl(str(f), "pref", skip_bad=True)[0]) == 2


# -- a trailing comma: named as one, in a row and in a JSON document ------------------------------
ROW = '{"prompt": "a", "chosen": "b", "rejected": "c"'


@pytest.mark.parametrize("line, error", [
    (ROW + ", }", "a trailing comma before '}' at column 47 (JSON allows none)"),   # Python: 'Expecting property
    (ROW + ",}", "a trailing comma before '}' at column 47 (JSON allows none)"),    # name enclosed in double quotes'
    ('{"prompt": [{"role": "user", "content": "a"},\t], "chosen": "b", "rejected": "c"}',
     "a trailing comma before ']' at column 45 (JSON allows none)"),                    # Python: 'Expecting value'
    (ROW + "},", "a trailing comma after the row at column 48 (JSON allows none)"),    # Python: 'Extra data'
    (ROW + "}, ", "a trailing comma after the row at column 48 (JSON allows none)"),
    ('{"prompt": "a", "chosen": "b",', "the line ends after a comma at column 30, before the row is closed (a "
                                       "JSONL row is one whole line)"),
])
@pytest.mark.parametrize("at", [1, 2])
@pytest.mark.parametrize("blank", ["", "\n \n"])
def test_a_trailing_comma_is_named_as_one(tmp_path, line, error, at, blank):
    """Python's words for a trailing comma name what it expected after it ('Expecting property name
    enclosed in double quotes at column 447', at the '}'): the error says it is a trailing comma, and
    where. On line 1 too: a JSONL file whose first row has one is no JSON document, after blank lines
    too (they are no line of the row, which a document's comma is on a line after)."""
    rows = [json.dumps(r) for r in PREF_ROWS]
    rows.insert(at - 1, line)
    f = tmp_path / "rows.jsonl"
    f.write_text(blank + "".join(r + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_jsonl(str(f), "pref")
    assert str(e.value) == f"{f}:{at + blank.count(chr(10))}: malformed JSON: {error}"
    assert len(read_jsonl(str(f), "pref", skip_bad=True)[0]) == 2


@pytest.mark.parametrize("line", ['{"prompt": "a",, "chosen": "b"}', '{"prompt": [1,,2]}', '{"prompt": "a," }x',
                                  '{"prompt": "a", "chosen": "b,"', '{"prompt": "a" "b,"}', '{"a": 1}, {"b": 2}',
                                  '{"prompt": "a,\t}',          # a tab in a string (no closing quote): 'Invalid
                                  '{"prompt": "a, \t]',         # control character', at the tab, after a comma
                                  '{"prompt": "a"},\u00a0',      # a no-break space is no JSON whitespace
                                  '{"prompt": "a"},\x0c'])
def test_a_comma_that_is_not_trailing_keeps_pythons_words(line):
    with pytest.raises(json.JSONDecodeError) as e:
        json.loads(line)
    assert malformed(line, e.value) == f"malformed JSON ({e.value.msg} at column {e.value.colno})"


def with_trailing_comma(value, k, gap):
    """(json.dumps(value, ensure_ascii=False) with a comma, then `gap`, after the last item of its k-th
    non-empty object or array (in the order they open, k modulo their number), the comma's index, and
    the '}' or ']' after it)."""
    k %= count(value)
    opened, comma = [0], []                 # how many have opened; the comma's (index, closer)
    def dump(v, out):
        if not (isinstance(v, (dict, list)) and v):
            return out + json.dumps(v, ensure_ascii=False)
        mine, is_dict = opened[0], isinstance(v, dict)
        opened[0] += 1
        out += "{" if is_dict else "["
        for i, item in enumerate(v.items() if is_dict else v):
            out += ", " if i else ""
            if is_dict:
                key, item = item
                out += json.dumps(key, ensure_ascii=False) + ": "
            out = dump(item, out)
        closer = "}" if is_dict else "]"
        if mine == k:
            comma.append((len(out), closer))
            out += "," + gap
        return out + closer
    text = dump(value, "")
    return (text, *comma[0])


def count(v):
    """How many non-empty objects and arrays v holds, itself included."""
    inner = v.values() if isinstance(v, dict) else v if isinstance(v, list) else []
    return (isinstance(v, (dict, list)) and bool(v)) + sum(count(x) for x in inner)


@given(st.dictionaries(TEXT, TEXT | st.lists(TEXT | st.dictionaries(TEXT, TEXT, max_size=2), max_size=2),
                       min_size=1, max_size=3), st.integers(0, 20), st.sampled_from(["", " ", "\t", "  "]))
@example({"prompt": "caf\u00e9 }", "chosen": ["]"]}, 1, "")     # closers in strings; columns count characters
def test_any_trailing_comma_in_a_row_is_named_at_its_column(scratch, row, k, gap):
    """Wherever it is (the row's '}', a list's ']', an object in a list), a trailing comma is named with
    the closer after it and its column; and where Python 3.13 reports it (at the comma itself:
    'Illegal trailing comma before end of object') it is found the same."""
    line, at, closer = with_trailing_comma(row, k, gap)
    f = scratch / "comma.jsonl"
    f.write_text(json.dumps(PREF_ROWS[0]) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_jsonl(str(f), "pref")
    assert str(e.value) == (f"{f}:2: malformed JSON: a trailing comma before '{closer}' at column {at + 1} "
                            f"(JSON allows none)")
    assert trailing_comma(line, at) == (at, closer)


@pytest.mark.parametrize("text, line, column, closer", [
    ('[\n  {"prompt": "a"},\n  {"prompt": "b"},\n]\n', 3, 18, "]"),
    ('[{"prompt": "a"}, {"prompt": "b"}, ]\n', 1, 34, "]"),                                 # json.dump's one line
    ('\n[{"prompt": "a"}, {"prompt": "b"}, ]\n', 2, 34, "]"),                 # after a blank line: column from 1
    ('{\n  "prompt": "a",\n  "chosen": "b",\n}\n', 3, 16, "}"),                              # one object
    ('{\n  "prompt": "a"\n}\n{\n  "prompt": "b",\n}\n', 5, 16, "}"),          # back to back: in the second
    ('\n\n[\n  {"prompt": "a", "chosen": [\n    "b",\n  ]}\n]\n', 5, 8, "]"),                  # blank lines first
])
@pytest.mark.parametrize("skip_bad", [False, True])
def test_a_json_document_with_a_trailing_comma_is_said_to_be_no_valid_json(tmp_path, text, line, column, closer,
                                                                          skip_bad):
    """The command that makes JSONL of a JSON document (json.load) fails on a trailing comma, with
    Python's words; the error names the comma instead, and says that it must go first."""
    f = tmp_path / "rows.json"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_jsonl(str(f), "prompt", skip_bad=skip_bad)
    first = text.count("\n", 0, len(text) - len(text.lstrip())) + 1
    kind = "several JSON objects, each written over several lines (what jq prints without -c)" \
        if text.count("\n{") else "a JSON document"
    assert str(e.value) == (f"{f}:{first}: the file looks like {kind}, not JSONL (one JSON object per line), and "
                            f"is no valid JSON either: a trailing comma before '{closer}' at line {line}, column "
                            f"{column} (JSON allows none); remove it, and this error will then say how to "
                            f"convert the file")
    lines = text.split("\n")
    lines[line - 1] = lines[line - 1][:column - 1] + lines[line - 1][column:]
    f.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_jsonl(str(f), "prompt")
    assert "e.g. python -c" in str(e.value) and command_output(str(e.value), f)


@pytest.mark.parametrize("tail", ['{"prompt": "b",}\n', '[\n  {"prompt": "b"},\n]\n', '{"prompt": "b"}\n'])
def test_what_follows_a_whole_json_array_leaves_the_file_an_array(tmp_path, tail):
    """A file that begins with a JSON array written over several lines is said to be that array,
    whatever text follows the array's ']': a trailing comma there is no comma of the array's, and the
    error does not send the reader to it."""
    f = tmp_path / "rows.json"
    f.write_text(json.dumps(PREF_ROWS[:1], indent=2) + "\n" + tail, encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_jsonl(str(f), "pref")
    array_command = f'{DOCUMENT}"{TO_JSONL["array"]}" {shlex.quote(str(f))} > rows.jsonl'
    assert str(e.value) == f"{f}:1: the file looks like {array_command}"
    assert "trailing comma" not in str(e.value)


@pytest.mark.parametrize("size", [(1 << 20) + 100, 3 << 19])
def test_a_json_document_is_told_from_its_first_mib(tmp_path, size):
    """Whether a file is a JSON document is read from its first MiB of text, not the whole file (a
    data file may be GiBs): an object whose first line alone runs past it (a 1.5 MiB prompt) keeps
    its first line's own error, which says a JSONL row is one whole line."""
    f = tmp_path / "rows.json"
    text = '{"prompt": "' + "x" * size + '",'
    f.write_text(text + '\n  "chosen": "b", "rejected": "c"\n}\n', encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_jsonl(str(f), "pref")
    assert str(e.value) == (f"{f}:1: malformed JSON: the line ends after a comma at column {len(text)}, before the "
                            f"row is closed (a JSONL row is one whole line)")


@pytest.mark.parametrize("content, document", [
    (b'{\n  "prompt": "caf\xe9"\n}\n', True),                      # Latin-1 inside a document
    (b'["x"]\n{"prompt": "caf\xe9"}\n', False),                      # and inside a JSONL file's row 2
    (b'\xef\xbb\xbf{\n  "prompt": "a"\n}\n', True),                   # a byte order mark first
    (b'\xef\xbb\xbf\n[{"prompt": "a"}]\n', True),                       # a BOM, a blank line, json.dump's line
])
def test_what_a_file_is_is_told_whatever_bytes_it_holds(tmp_path, content, document):
    """Telling a JSON document from a JSONL file reads past line 1: a byte that is not UTF-8 there
    must not crash it (nor hide the document), a byte order mark must not hide one."""
    f = tmp_path / "rows.jsonl"
    f.write_bytes(content)
    with pytest.raises(DataError) as e:
        read_jsonl(str(f), "prompt")
    assert ("looks like a JSON document" in str(e.value)) == document, str(e.value)


@pytest.mark.parametrize("later", ["[", "a, b", "[1, 2]", '{"prompt":'])
def test_only_the_first_row_may_say_the_file_is_no_jsonl(tmp_path, later):
    """A later line that would begin a JSON document or CSV is a bad row of a JSONL file."""
    f = tmp_path / "rows.jsonl"
    f.write_text(json.dumps(PREF_ROWS[0]) + "\n" + later + "\n" + json.dumps(PREF_ROWS[1]) + "\n")
    assert read_jsonl(str(f), "pref", skip_bad=True)[1] == 1
    with pytest.raises(DataError) as e:
        read_jsonl(str(f), "pref")
    assert str(e.value).startswith(f"{f}:2: ") and "looks like" not in str(e.value), str(e.value)


def test_the_first_row_is_the_files_first_line_that_is_not_blank_whatever_its_bytes(tmp_path):
    """A first line that is not UTF-8 is the file's first row (a bad one): the '[' on line 2 is a
    bad row of a JSONL file, not a JSON document's first line."""
    f = tmp_path / "rows.jsonl"
    f.write_bytes(b'{"prompt": "caf\xe9"}\n[\n' + json.dumps(PREF_ROWS[0]).encode() + b"\n")
    rows, skipped = read_jsonl(str(f), "pref", skip_bad=True)
    assert (len(rows), skipped) == (1, 2)


@given(st.lists(ASCII, min_size=1, max_size=3), st.integers(0, 3), TEXT, st.integers(0x80, 0xff), ASCII)
@example(["a", "b"], 1, "", 0xe9, "t")                 # 'caf\xe9' written in Latin-1
@example(["a"], 0, "\u4f60\u597d \u00e9", 0xe9, "")    # the column counts characters, not bytes
def test_a_line_that_is_not_utf8_is_a_bad_row_naming_its_line_and_column(scratch, good, at, head, byte, tail):
    """A line with a byte that is not UTF-8 (one Latin-1 line among UTF-8 ones) is a DataError naming
    the file, the line and the column of that byte; with skip_bad it is skipped and counted."""
    at = min(at, len(good))
    before = json.dumps({"prompt": head}, ensure_ascii=False)[:-2]          # up to the closing '"}'
    bad = before.encode("utf-8") + bytes([byte]) + tail.encode("ascii") + b'"}\n'
    f = scratch / "latin1.jsonl"
    f.write_bytes(jsonl(good[:at]).encode("utf-8") + bad + jsonl(good[at:]).encode("utf-8"))
    with pytest.raises(DataError) as e:
        read_jsonl(str(f), "prompt")
    assert str(e.value) == (f"{f}:{at + 1}: not UTF-8 text (byte 0x{byte:02x} at column {len(before) + 1}; "
                            f"Latin-1 or Windows-1252?); re-save the file as UTF-8")
    rows, skipped = read_jsonl(str(f), "prompt", skip_bad=True)
    assert [r["prompt"] for r in rows] == good and skipped == 1
    assert [r["_where"] for r in rows] == [f"{f}:{i}" for i in range(1, len(good) + 2) if i != at + 1]


def test_a_prompt_the_template_refuses_is_a_bad_row_naming_it():
    from nanoalign.data import tokenize_rows

    class Refuses:
        def encode_prompt(self, prompt):
            if "system" in str(prompt):
                raise ValueError("this template has no system role")
            return [5, 6]
    rows = [{"prompt": "ok", "_where": "f:1"}, {"prompt": [{"role": "system", "content": "x"}], "_where": "f:2"}]
    with pytest.raises(DataError) as e:
        tokenize_rows(rows, Refuses(), "prompt", 16)
    assert str(e.value) == "f:2: this template has no system role"
    out, dropped = tokenize_rows(rows, Refuses(), "prompt", 16, skip_bad=True)
    assert [x["prompt"] for x in out] == [[5, 6]] and dropped == 1


# -- a tokenizer's own error names the row ---------------------------------------------------------
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
                            f"response within max_length={len(p)} (raise --max_length, or use --skip_bad_rows "
                            f"to drop such rows)")


@pytest.mark.parametrize("kind, row", [
    ("prompt", {"prompt": "x" * 20}),
    ("sft", {"prompt": "x" * 20, "response": "y"}),
    ("pref", {"prompt": "x" * 20, "chosen": "y", "rejected": "z"}),
])
def test_tokenize_rows_names_a_row_without_where_as_row(kind, row):
    """A row that carries no "_where" (built in code, not read from a file) is named 'row' in the
    error of a prompt too long for max_length."""
    with pytest.raises(DataError) as e:
        tokenize_rows([row], TOK, kind, 8)
    assert str(e.value).startswith("row: field 'prompt'")


# -- what tokenize_rows drops, and counts ----------------------------------------------------------
SFT_ROWS = {                             # under max_length=16 with the byte tokenizer TOK
    "fits": {"prompt": "q", "response": "a"},                               # 6 + 2 tokens
    "bad": {"prompt": "x" * 20, "response": "a"},                           # a 25-token prompt: DataError
    "whole": {"prompt": "q", "response": "y" * 20, "keep_whole": True},     # 6 + 21 tokens: not cut, dropped
}


@given(st.lists(st.sampled_from(sorted(SFT_ROWS)), max_size=8))
@example(["bad", "bad"])
@example(["whole", "fits", "whole"])
def test_tokenize_rows_counts_every_dropped_row(labels):
    """With skip_bad, every bad row and every keep_whole row too long to keep is dropped and counted
    once, and its 'file:line: why' added to `bad`, in order; the rows that fit come back, in order."""
    rows = [{**SFT_ROWS[k], "n": i, "_where": f"f:{i}"} for i, k in enumerate(labels)]
    bad = []
    out, dropped = tokenize_rows(rows, TOK, "sft", 16, skip_bad=True, bad=bad)
    assert dropped == sum(k != "fits" for k in labels) == len(bad)
    assert [e["row"]["n"] for e in out] == [i for i, k in enumerate(labels) if k == "fits"]
    why = {"bad": "field 'prompt' is 25 tokens, which leaves no room for the response within max_length=16 "
                  "(raise --max_length, or use --skip_bad_rows to drop such rows)",
           "whole": "prompt + response is 27 tokens, over the limit of 16, and this example is never cut"}
    assert bad == [f"f:{i}: {why[k]}" for i, k in enumerate(labels) if k != "fits"]


BAD_LINES = ["{oops", '{"x": 1}', "3", '{"prompt": 5}', '{"prompt": []}', "not json"]


@given(st.lists(st.sampled_from(BAD_LINES + ['{"prompt": "a"}', '{"prompt": "b"}', ""]), max_size=8))
@example(['{"prompt": "a"}', "{oops", "", '{"x": 1}'])
def test_read_jsonl_gives_each_skipped_rows_error(scratch, lines):
    """With skip_bad, `bad` gets the error of each skipped line, the one it raises without skip_bad
    (read at the same line number), in file order; the rows read are the same with or without it."""
    f = scratch / "bad.jsonl"
    lines = lines + ['{"prompt": "z"}']                    # a usable row: no "no usable rows" error
    f.write_text("".join(x + "\n" for x in lines))
    bad = []
    rows, skipped = read_jsonl(str(f), "prompt", skip_bad=True, bad=bad)
    assert (rows, skipped) == read_jsonl(str(f), "prompt", skip_bad=True) and skipped == len(bad)
    alone = []
    for i, x in enumerate(lines):
        if x in BAD_LINES:
            f.write_text("\n" * i + x + "\n")
            with pytest.raises(DataError) as e:
                read_jsonl(str(f), "prompt")
            alone.append(str(e.value))
    assert bad == alone


# -- per-objective labels: read as they are; checked by the methods that read them ---------------
def labelled(labels, objectives=None):
    return {"prompt": "q?", "chosen": "4.", "rejected": "5.", "labels": labels,
            "objectives": {"correct": "the sum is right"} if objectives is None else objectives}


def test_a_labels_field_is_read_as_it_is_for_methods_that_do_not_use_it(tmp_path):
    """DPO or ORPO data may hold its own 'labels' (ratings, say): reading it is no error."""
    path = write(tmp_path, json.dumps(labelled({"helpfulness": 4.5}, {})) + "\n")
    rows, _ = read_jsonl(path, "pref")
    assert rows[0]["labels"] == {"helpfulness": 4.5}


def test_labels_written_as_json_numbers_are_read_as_the_strings_they_stand_for():
    row = labelled({"correct": 1, "b": 2, "c": "equal"}, {"correct": "right", "b": "brief", "c": "clear"})
    assert check_labels(row, "f:1")["labels"] == {"correct": "1", "b": "2", "c": "equal"}


@pytest.mark.parametrize("labels, objectives, pattern", [
    ({"correct": "A"}, None, r"^f:3: objective 'correct': label 'A' is not one of 1, 2, equal"),
    ({"correct": True}, None, r"^f:3: objective 'correct': label True is not one of 1, 2, equal"),
    ({"correct": 3}, None, r"^f:3: objective 'correct': label 3 is not one of 1, 2, equal"),
    ({"correct": 1.0}, None, r"^f:3: objective 'correct': label 1\.0 is not one of 1, 2, equal"),
    ({"brief": "1"}, None, r"^f:3: objective 'brief' is labelled but has no marker"),
    ({"help": "1"}, {"help": 5}, r"^f:3: objectives: 'help' must be a string \(its description\), got int$"),
    (["correct"], None, r"^f:3: per-objective rows need 'labels' \{objective: 1\|2\|equal\} and 'objectives'"),
    ({"correct": "1"}, "right", r"^f:3: per-objective rows need 'labels'"),
])
def test_a_bad_label_names_the_row_and_objective(labels, objectives, pattern):
    with pytest.raises(DataError, match=pattern):
        check_labels(labelled(labels, objectives), "f:3")


def test_implicit_prompt_conversations_that_differ_before_their_last_answer_are_a_bad_row():
    """Two conversations that differ at an earlier turn leave responses of several messages
    ([a1, u2, a2]), of which only the last assistant message would be trained, after the shared
    prompt: the row read as (hi -> a2), an answer to a question it never saw, silently. Now an error
    naming the row (with --skip_bad_rows, skipped and counted); a difference in the last answer alone
    reads as before."""
    u2 = {"role": "user", "content": "and?"}
    c = [USER, {"role": "assistant", "content": "a1"}, u2, {"role": "assistant", "content": "a2"}]
    r = [USER, {"role": "assistant", "content": "b1"}, u2, {"role": "assistant", "content": "b2"}]
    msg = error_of({"chosen": c, "rejected": r}, "pref")
    assert msg.startswith(f"{W}: no 'prompt' field, and 'chosen' and 'rejected' differ before their "
                          f"last assistant message (at message 2)")        # a1 / b1, after the shared USER
    two = error_of({"chosen": c[:2] + c[3:], "rejected": r[:2] + r[3:]}, "pref")   # [a1, a2] / [b1, b2]
    assert "differ before their last assistant message (at message 2)" in two, two
    same_start = validate_row({"chosen": c, "rejected": c[:3] + r[3:]}, "pref", W)
    assert (same_start["prompt"], same_start["chosen"], same_start["rejected"]) == (c[:3], c[3:], r[3:])


@pytest.mark.parametrize("kind, row", [
    ("pref", {"prompt": "q", "chosen": "a", "rejected": "b"}),
    ("pref", {"chosen": "Q: a", "rejected": "Q: b"}),                  # implicit prompt
    ("sft", {"prompt": "q", "response": "a"}),
    ("sft", {"messages": [USER, BOT]}),
    ("prompt", {"prompt": "q"}),
    (read_pair, {"prompt": "q", "a": "x", "b": "y"}),
])
def test_a_system_field_is_refused_not_ignored(kind, row):
    """Orca-style rows carry their system message in a top-level 'system' field, which no kind reads:
    ignored, every row trained without it. The row is refused, saying where a system message goes."""
    validate_row(row, kind, W)                                          # the row alone is fine
    assert error_of({**row, "system": "You are terse."}, kind) == (
        f"{W}: field 'system' is not read; give the system message as the conversation's first message, "
        f'{{"role": "system", "content": ...}}, in \'prompt\' (or \'messages\'), or rename the field if it '
        f"holds no system message")
