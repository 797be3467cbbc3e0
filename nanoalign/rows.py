"""
Rows: what one line of a data file may hold, and the checks that say so, naming the file, line and
field of anything else. nanoalign/data.py reads a file's lines through these (`read_jsonl`, the
table `KINDS`) and turns the rows into token ids and batches.

  preference  {"prompt": P, "chosen": R, "rejected": R}      (UltraFeedback-binarized, TRL)
              or TRL's implicit prompt: {"chosen": C, "rejected": C} with no "prompt", where both
              are whole conversations (or whole strings); the prompt is their shared beginning (two
              conversations that part before their last answer are a bad row; two strings part at
              a word boundary, `implicit_prompt`)
  sft         {"prompt": P, "response": R}  or TRL's {"prompt": P, "completion": R}
              or  {"messages": [...]}  (last assistant turn = response)
  prompt      {"prompt": P}   (on-policy methods; any row with a prompt works, and so does an
              implicit-prompt preference row: its prompt is the one read_pref takes)
  pair        {"prompt": P, "a": R, "b": R}: two responses to judge, in no order of preference, or
              any preference row (a = chosen, b = rejected); read by the judge's command line
              (nanoalign/judge_cli.py), no kind of data.py's KINDS (nothing trains on it)
  P, R        a string, or a list of chat messages {"role": ..., "content": ...}; R's list ends
              with its answer, the last assistant message, and before it holds nothing or P's
              messages (a string P is one user message)
  labels      optional, on preference rows: {objective: "1" | "2" | "equal"} (response 1 = chosen;
              1 and 2 may be JSON numbers), with "objectives": {objective: description};
              MetaAligner and principle-aware judges read them, through check_labels (other
              methods leave a "labels" field alone)

  system      no kind reads a top-level "system" field (Orca-style rows): a row that has one is
              refused (`check_system`), as ignoring it would train without the system message

A checker takes the parsed row (a JSON object: data.validate_row checks that) and `where`
("file:line") and returns the row normalized (an implicit prompt split off, TRL's "completion"
renamed "response", labels as strings), or raises DataError. A missing field's error names a key of
the row that looks like a misspelling of it ('rejeted'), as a message's missing 'role' or 'content'
does (`misspelled`). sample.py checks its own files (--prompts_file, --answers_file) with the same
functions, and the judge's command line its --pairs.
"""
import re

from model.tokenizer import as_messages
from nanoalign.suggest import did_you_mean
from nanoalign.textfile import DataError


def check_text(v, where, field):
    if isinstance(v, str):
        if not v.strip() and field != "prompt":
            raise DataError(f"{where}: field '{field}' is empty")
        return v
    if isinstance(v, list):
        return _check_messages(v, where, field)
    raise DataError(f"{where}: field '{field}' must be a string or a list of "
                    f"{{\"role\", \"content\"}} messages, got {type(v).__name__}")


def _check_messages(msgs, where, field):
    """A message list: not empty, and every message an object with a string 'role' and a string
    'content'. The error names the first message that is not (numbered from 1) and what it lacks.
    Which roles there are is the chat template's business, not checked here."""
    if not msgs:
        raise DataError(f"{where}: field '{field}' is an empty list; a message list needs at least "
                        f"one {{\"role\", \"content\"}} message")
    for n, m in enumerate(msgs, 1):
        if not isinstance(m, dict):
            raise DataError(f"{where}: field '{field}': message {n} is not a {{\"role\", \"content\"}} "
                            f"object, got {type(m).__name__}")
        for key in ("role", "content"):
            if not isinstance(m.get(key), str):
                got = f"got {type(m[key]).__name__}" if key in m else "it has none"
                typo = "" if key in m else misspelled(m, [key], ("role", "content"), "message")[1]
                raise DataError(f"{where}: field '{field}': message {n} has no string '{key}' ({got}){typo}")
    return msgs


# every field a row kind reads: a row's key that is one of these is no misspelling of another
FIELDS = ("prompt", "chosen", "rejected", "response", "completion", "messages", "labels", "objectives")


def misspelled(obj, names, known, what="row"):
    """(name, "; the row has 'rejeted': did you mean 'rejected'?") for the first of `names` (missing
    from the row, or message, `obj`) that one of obj's keys looks like a misspelling of, by
    suggest.did_you_mean's measure (case ignored: 'Prompt' is 'prompt'); (None, '') where none does.
    A key that is itself a field (`known`) is no misspelling, nor is one of several words one of which
    is a field, a field about that field: UltraFeedback's 'prompt_id' and 'score_chosen' are close
    to 'prompt' and 'chosen' by that measure, and would be guessed wrong where those are missing.
    A field with a stray space ('prompt ', easy to leave in a hand-written file) is one word, so a
    misspelling: it was taken for a field about 'prompt', and its row read as an implicit prompt."""
    keys = [k for k in obj if isinstance(k, str) and k not in known
            and not (len(words := [w for w in re.split(r"[\W_]+", k) if w]) > 1
                     and any(w.lower() in known for w in words))]
    for name in names:
        for k in keys:
            if guess := did_you_mean(k, [name], sep=": "):
                return name, f"; the {what} has {k!r}{guess}"
    return None, ""


def _check_fields(row, fields, kind, where, other="", also=()):
    """The row with each of `fields` checked as text; a missing one names what the kind needs (and
    `other`: the kind's other shape, for the one who wrote that shape wrong), and a key of the row
    that looks like a misspelling of a missing field or of one of `also`, the other shape's fields:
    then that missing field is the one named ('rejeted' names 'rejected', not a missing 'prompt')."""
    out = dict(row)
    for f in fields:
        if f not in row:
            missing = [g for g in fields if g not in row]
            meant, typo = misspelled(row, missing + [a for a in also if a not in row], FIELDS)
            named = meant if meant in missing else f
            raise DataError(f"{where}: missing field '{named}' (a {kind} row needs {', '.join(fields)}{other}){typo}")
        out[f] = check_text(row[f], where, f)
    return out


def check_response(v, where, field, first=1):
    """A response given as messages must contain an assistant turn, end with it, and its last one,
    the response, must not be empty (as a string response must not be). A turn after the answer (a
    user's thanks, a tool's result) would be dropped without a word, so the row would train other
    than the file says; TRL 1.16 trains it as part of the completion, as text the policy writes.
    (sample.py checks its --answers_file with this too: there the turn would go uncorrected, so the
    error says "ignored", which is true of both.)
    first: the number of v's first message in the file (an implicit prompt's response goes on
    after the prompt's messages)."""
    if isinstance(v, list):
        answers = [m["content"] for m in v if m["role"] == "assistant"]
        if not answers:
            raise DataError(f"{where}: field '{field}' is a message list with no assistant message; "
                            f"the response is the last assistant message")
        if v[-1]["role"] != "assistant":
            n = max(i for i, m in enumerate(v, first) if m["role"] == "assistant")
            raise DataError(f"{where}: field '{field}' ends with a '{v[-1]['role']}' message: the "
                            f"response is the last assistant message (message {n}), and the turns "
                            f"after it, from message {n + 1}, would be ignored; end the list at "
                            f"the response")
        if not answers[-1].strip():
            raise DataError(f"{where}: field '{field}' has an empty last assistant message (the "
                            f"response)")
    return v


def check_turns_before_answer(prompt, response, where, field):
    """A response given as messages, with an explicit prompt: the turns before its answer must be
    none, or the prompt's own messages (TRL's conversational rows repeat the prompt there; a string
    prompt is the one user message the chat template gets, `as_messages`). Only the answer is
    trained, after 'prompt', so any other turns would be dropped without a word: a row {prompt:
    "What is 2+2?", chosen: [user "Tell me a joke", assistant "4"]} trained the answer to a question
    it never asked, and {prompt: [Q1], chosen: [Q1, A1, Q2, A2]} trained Q1 -> A2. (The implicit
    prompt's rows are refused in read_pref, which can say more.)"""
    if isinstance(response, list) and len(response) > 1:
        before, asked = response[:-1], as_messages(prompt)
        if before != asked:
            n = next((i for i, (a, b) in enumerate(zip(before, asked)) if a != b),
                     min(len(before), len(asked)))             # where they part, or one ends
            raise DataError(f"{where}: field '{field}': the messages before its answer are not the 'prompt' "
                            f"field's conversation (from message {n + 1}), and would be ignored (the answer "
                            f"goes after 'prompt'); give '{field}' as the answer alone, or as the prompt's "
                            f"messages then the answer")
    return response


def implicit_prompt(chosen, rejected, where):
    """TRL's implicit-prompt row: (prompt, chosen, rejected) from two whole conversations (message
    lists: the prompt is their shared leading messages) or two whole strings (the shared leading
    text up to a word boundary; a space right before the split goes with the responses, as TRL
    does)."""
    if chosen == rejected:
        # both responses would be empty, and the error said so of 'chosen' alone ("an empty list; a
        # message list needs at least one message"), of a list of two: the row has nothing to prefer
        what = "conversation" if isinstance(chosen, list) else "string"
        raise DataError(f"{where}: no 'prompt' field, and 'chosen' and 'rejected' are the same {what}, so "
                        f"there is no answer to prefer")
    if isinstance(chosen, list) and isinstance(rejected, list):
        n = 0
        while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
            n += 1
        if n == 0:
            raise DataError(f"{where}: no 'prompt' field, and 'chosen' and 'rejected' share no leading "
                            f"message to take as the prompt")
        return chosen[:n], chosen[n:], rejected[n:]
    if isinstance(chosen, str) and isinstance(rejected, str):
        n = 0
        while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
            n += 1
        shared = chosen[:n]
        # TRL splits at the first difference, in a word too ("... French. Ch" + "at." / "ien."): it
        # applies no chat template to string rows, so there prompt + answer is the same text either
        # way. Here the prompt is the user's message to the chat template and the answers the
        # assistant's, so a split inside a word (the shared text ends in a non-space, and a side goes
        # on with one; a side that ends there, an empty answer refused below, goes on with nothing)
        # goes back to after the shared text's last whitespace
        next_chars = [x[n] for x in (chosen, rejected) if n < len(x)]
        in_word = n and not shared[-1].isspace() and not all(ch.isspace() for ch in next_chars)
        if in_word:
            n = max((i + 1 for i, ch in enumerate(shared) if ch.isspace()), default=0)
        if n and chosen[n - 1] == " ":
            n -= 1
        if n == 0 and in_word:
            # shared text with no whitespace is one word's start ("Ye" of "Yes." / "Yeah."): as a
            # prompt it would be the user's message "Ye", answered "s." or "ah."; refused, not guessed
            raise DataError(f"{where}: no 'prompt' field, and 'chosen' and 'rejected' share only the start "
                            f"of a word ({shared!r}), no whole words to take as the prompt")
        if n == 0:
            raise DataError(f"{where}: no 'prompt' field, and 'chosen' and 'rejected' share no leading "
                            f"text to take as the prompt")
        return chosen[:n], chosen[n:], rejected[n:]
    raise DataError(f"{where}: no 'prompt' field, and 'chosen' / 'rejected' are not both strings or "
                    f"both message lists")


LABELS = ("1", "2", "equal")   # per objective: response 1 (chosen) is better, response 2 is, a tie


def check_labels(row, where):
    """A row's per-objective labels (MetaAligner, principle-aware judges): {objective: "1" | "2" |
    "equal"}, JSON's numbers 1 and 2 read as "1" and "2", and every labelled objective described in
    'objectives'. Returns the row with its labels as strings. Anything else is an error here: a
    label read loosely later (`1` is not `"1"`) would silently reverse a judgment."""
    labels, markers = row.get("labels"), row.get("objectives")
    if not isinstance(labels, dict) or not isinstance(markers, dict):
        raise DataError(f"{where}: per-objective rows need 'labels' {{objective: 1|2|equal}} and "
                        f"'objectives' {{objective: description}}")
    out = {}
    for k, v in labels.items():
        out[k] = str(v) if type(v) is int else v          # not bool: True is no label
        if out[k] not in LABELS:
            raise DataError(f"{where}: objective '{k}': label {v!r} is not one of 1, 2, equal")
        if k not in markers:
            raise DataError(f"{where}: objective '{k}' is labelled but has no marker (description) "
                            f"in 'objectives'")
        if not isinstance(markers[k], str):
            raise DataError(f"{where}: objectives: '{k}' must be a string (its description), got "
                            f"{type(markers[k]).__name__}")
    return {**row, "labels": out}


# a row's other shape, named where a field is missing: TRL's implicit prompt
IMPLICIT = "; or, with no prompt, chosen and rejected conversations that begin with it"


def is_implicit(row):
    """Whether a row is TRL's implicit-prompt preference row: chosen and rejected, no prompt, and no
    key that looks like a misspelled one ('promt'), which would be ignored, its prompt taken from
    the answers ("share no leading text", or silently the answers' first words)."""
    return ("prompt" not in row and "chosen" in row and "rejected" in row
            and misspelled(row, ["prompt"], FIELDS)[0] is None)


def check_system(row, where):
    """A row's top-level 'system' field is refused, whatever kind reads the row: no kind reads one,
    and ignored (as TRL 1.16 ignores it: its data functions read no such column) every row would
    train without the system message its file gives. A conversation's system message is its first
    message."""
    if "system" in row:
        raise DataError(f"{where}: field 'system' is not read; give the system message as the "
                        f"conversation's first message, {{\"role\": \"system\", \"content\": ...}}, in "
                        f"'prompt' (or 'messages'), or rename the field if it holds no system message")


def read_pref(row, where):
    implicit = is_implicit(row)
    if implicit:
        c = check_text(row["chosen"], where, "chosen")
        r = check_text(row["rejected"], where, "rejected")
        p, c, r = implicit_prompt(c, r, where)
        row = {**row, "prompt": p, "chosen": c, "rejected": r}
    out = _check_fields(row, ("prompt", "chosen", "rejected"), "preference", where, IMPLICIT)
    for f in ("chosen", "rejected"):
        check_response(out[f], where, f, len(out["prompt"]) + 1 if implicit else 1)
        if not implicit:
            check_turns_before_answer(out["prompt"], out[f], where, f)
    if implicit and isinstance(out["chosen"], list) and max(len(out["chosen"]), len(out["rejected"])) > 1:
        # conversations that part before their last answer: only that answer would be trained, after
        # the shared prompt, the turns between silently dropped (an answer to a question not asked)
        raise DataError(f"{where}: no 'prompt' field, and 'chosen' and 'rejected' differ before their "
                        f"last assistant message (at message {len(out['prompt']) + 1}); a row trains one "
                        f"answer: give the conversation before it as 'prompt', the two answers as "
                        f"'chosen' and 'rejected'")
    return out


def read_pair(row, where):
    """A pair to judge (python -m nanoalign.judge_cli): {prompt, a, b}, a and b checked as a preference
    row's responses are, or a preference row in any form read_pref reads (TRL's implicit prompt too),
    returned with a = chosen and b = rejected. A row of both shapes is refused: which two responses
    were meant?"""
    if "a" in row or "b" in row:
        if "chosen" in row or "rejected" in row:
            raise DataError(f"{where}: both 'a'/'b' and 'chosen'/'rejected'; a row holds one pair: keep "
                            f"one of them")
        out = _check_fields(row, ("prompt", "a", "b"), "pair", where,
                            "; or a preference row: prompt, chosen, rejected")
        for f in ("a", "b"):
            check_response(out[f], where, f)
            check_turns_before_answer(out["prompt"], out[f], where, f)
        return out
    if "chosen" not in row and "rejected" not in row:    # neither shape: name the pair's own fields first
        raise DataError(f"{where}: missing field 'a' (a pair row needs prompt, a, b; or a preference row: "
                        f"prompt, chosen, rejected)")
    out = read_pref(row, where)
    return {**out, "a": out["chosen"], "b": out["rejected"]}


def read_sft(row, where):
    if "messages" in row:
        msgs = check_text(row["messages"], where, "messages")
        if isinstance(msgs, str) or msgs[-1]["role"] != "assistant":
            raise DataError(f"{where}: field 'messages' must end with an assistant message")
        if not msgs[-1]["content"].strip():
            raise DataError(f"{where}: field 'messages' has an empty final assistant message")
        return {**row, "prompt": msgs[:-1], "response": msgs[-1]["content"]}
    if "completion" in row:     # TRL's prompt-completion format: its name for the response
        if "response" in row:
            raise DataError(f"{where}: both 'response' and 'completion' (TRL's name for the response); "
                            f"keep one")
        out = _check_fields(row, ("prompt", "completion"), "sft", where)
        check_response(out["completion"], where, "completion")
        check_turns_before_answer(out["prompt"], out["completion"], where, "completion")
        return {**out, "response": out.pop("completion")}
    out = _check_fields(row, ("prompt", "response"), "sft", where,
                        "; or prompt, completion (TRL's); or messages, ending with the answer",
                        also=("completion", "messages"))
    check_response(out["response"], where, "response")
    check_turns_before_answer(out["prompt"], out["response"], where, "response")
    return out


def read_prompt(row, where):
    """A prompt row, or an implicit-prompt preference row (the file DPO and ORPO train on), read as
    read_pref reads it: its prompt the same, and a row that read_pref refuses refused the same, so
    that one file serves both the offline and the on-policy methods (and sample.py's --prompts_file)."""
    if is_implicit(row):
        return read_pref(row, where)
    return _check_fields(row, ("prompt",), "prompt", where, IMPLICIT, also=("chosen", "rejected"))
