"""
Data: JSONL rows in the conventions people already have, tokenized, truncated, batched.

  preference  {"prompt": P, "chosen": R, "rejected": R}      (UltraFeedback-binarized, TRL)
              or TRL's implicit prompt: {"chosen": C, "rejected": C} with no "prompt", where both
              are whole conversations (or whole strings); the prompt is their shared beginning (two
              conversations that part before their last answer are a bad row; two strings part at
              a word boundary, `implicit_prompt`)
  sft         {"prompt": P, "response": R}  or TRL's {"prompt": P, "completion": R}
              or  {"messages": [...]}  (last assistant turn = response)
  prompt      {"prompt": P}   (on-policy methods; any row with a prompt works)
  P, R        a string, or a list of chat messages {"role": ..., "content": ...}; R's list ends
              with its answer, the last assistant message, and before it holds nothing or P's
              messages (a string P is one user message)
  labels      optional, on preference rows: {objective: "1" | "2" | "equal"} (response 1 = chosen;
              1 and 2 may be JSON numbers), with "objectives": {objective: description};
              MetaAligner and principle-aware judges read them, through check_labels (other
              methods leave a "labels" field alone)

Every kind is one row of the table `KINDS` at the bottom: how a row of that kind is read and checked,
how it becomes token ids, how examples become a batch. An unknown kind is an error (a KeyError from
the table is turned into a DataError naming the kinds), never a fall-through.

Prompt and response are tokenized separately and concatenated (docs/methods.md#sequence-log-probabilities).
The response ends with the chat template's end of turn. Truncation to max_length: the response loses
tokens from the RIGHT (the example's "cut" says so; train.py counts and names those rows). A prompt
that leaves no room for a response (len(prompt) >= max_length) is a bad row: an error naming the
row, or with skip_bad a dropped row that is counted; never a silent 0/0 in a mean. A row marked "keep_whole" (judgment targets, whose label must be scored) is dropped and
counted, not cut, when its response does not fit.

Batches are right-padded: training rows need no left padding because positions start at 0 anyway.
`targets[b, t]` = ids[b, t + 1]: hidden state t predicts token t + 1, and `mask` marks the targets
that are response tokens. A packed batch (make_batch(..., packed=True), train.py --packed) adds the
same rows back to back without padding (`pack`); the padded tensors are its readable reference.
"""
import json
from dataclasses import dataclass
from typing import Callable

import torch

from model.tokenizer import as_messages
from nanoalign.textfile import DataError, NotJSONL, decode_line, not_jsonl, raw_lines



# -- reading: one checker per row kind ----------------------------------------------------------------
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
                raise DataError(f"{where}: field '{field}': message {n} has no string '{key}' ({got})")
    return msgs


def _check_fields(row, fields, kind, where, other=""):
    """The row with each of `fields` checked as text; a missing one names what the kind needs (and
    `other`: the kind's other shape, for the one who wrote that shape wrong)."""
    out = dict(row)
    for f in fields:
        if f not in row:
            raise DataError(f"{where}: missing field '{f}' (a {kind} row needs {', '.join(fields)}{other})")
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
    prompt's rows are refused in _read_pref, which can say more.)"""
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
        if not isinstance(markers.get(k), str):
            raise DataError(f"{where}: objective '{k}' is labelled but has no marker (description) "
                            f"in 'objectives'")
    return {**row, "labels": out}


def _read_pref(row, where):
    implicit = "prompt" not in row and "chosen" in row and "rejected" in row
    if implicit:
        c = check_text(row["chosen"], where, "chosen")
        r = check_text(row["rejected"], where, "rejected")
        p, c, r = implicit_prompt(c, r, where)
        row = {**row, "prompt": p, "chosen": c, "rejected": r}
    out = _check_fields(row, ("prompt", "chosen", "rejected"), "preference", where,
                        "; or, with no prompt, chosen and rejected conversations that begin with it")
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


def _read_sft(row, where):
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
                        "; or prompt, completion (TRL's); or messages, ending with the answer")
    check_response(out["response"], where, "response")
    check_turns_before_answer(out["prompt"], out["response"], where, "response")
    return out


def _read_prompt(row, where):
    return _check_fields(row, ("prompt",), "prompt", where)


def validate_row(row, kind, where):
    """Check one parsed row of a row kind ('sft', 'pref' or 'prompt'); returns the normalized row."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    read = kind_of(kind).read
    if read is None:
        raise DataError(f"{where}: '{kind}' examples are built by a method, not read from a file")
    return read(row, where)


def read_jsonl(path, kind, skip_bad=False, check=None, bad=None):
    """Rows of a JSONL file, validated. Returns (rows, n_skipped). Each line is decoded on its own,
    so a line that is not UTF-8 is one bad row, skipped and counted with skip_bad; a file that is
    no JSONL (no text, a JSON document, CSV) is one error, with skip_bad too. check: a method's
    own (row, where) -> row check after the kind's (Method.check_row: the labels MetaAligner reads),
    run here so that a row it refuses is skipped and counted like any other bad row. bad: a list
    that gets each skipped row's error, "file:line: why", in file order (train.py names them)."""
    rows, skipped = [], 0
    for i, (where, raw) in enumerate(raw_lines(path), 1):
        try:
            # without its newline: json.loads counts columns from the last one it sees, so an error at
            # a line's end (a missing '}') was 'column 1' of the line after it
            line = decode_line(raw, where).rstrip("\r\n")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                if i == 1 and (what := not_jsonl(path, line)):   # the file is wrong, not its first row
                    raise NotJSONL(f"{where}: the file looks like {what}") from None
                raise DataError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
            row = validate_row(row, kind, where)
            if check is not None:
                row = check(row, where)
            row["_where"] = where
            rows.append(row)
        except DataError as e:
            if not skip_bad or isinstance(e, NotJSONL):
                raise
            skipped += 1
            if bad is not None:
                bad.append(str(e))
    if not rows:
        raise DataError(f"{path}: no usable rows")
    return rows, skipped


# -- tokenizing: one function per example kind ---------------------------------------------------------
class TooLong(Exception):
    """An example that must not be cut (a judgment label, a self-judgement triple): drop and count."""


def encode_pair(tok, prompt, response, where):
    """(prompt ids, response ids) through the tokenizer's chat template; a template's own error (a
    system message Gemma refuses) or a response without an assistant turn is a DataError naming the
    row."""
    try:
        return tok.encode_pair(prompt, response)
    except ValueError as e:   # the template's own error (TemplateError), a response with no answer
        raise DataError(f"{where}: {e}") from None


def encode_prompt(tok, prompt, where):
    """Prompt ids up to the generation prompt; a template's error names the row."""
    try:
        return tok.encode_prompt(prompt)
    except ValueError as e:
        raise DataError(f"{where}: {e}") from None


def _fit_pair(tok, prompt, response, max_length, where="row", keep_whole=False):
    """(ids, n_prompt, cut): tokenize_pair's, and whether the response lost tokens."""
    p, r = encode_pair(tok, prompt, response, where)
    if keep_whole and len(p) + len(r) > max_length:
        raise TooLong(f"{where}: prompt + response is {len(p) + len(r)} tokens, over the limit of "
                      f"{max_length}, and this example is never cut")
    if len(p) >= max_length:
        raise DataError(f"{where}: field 'prompt' is {len(p)} tokens, which leaves no room for the "
                        f"response within max_length={max_length}")
    kept = r[:max_length - len(p)]   # the response loses tokens from the right
    if not p and len(kept) < 2:      # its one token has nothing before it: nothing to train on
        raise DataError(f"{where}: the prompt is no tokens and the response one, so no token has "
                        f"anything before it to be predicted from")
    return p + kept, len(p), len(kept) < len(r)


def tokenize_pair(tok, prompt, response, max_length, where="row", keep_whole=False):
    """(ids, n_prompt): the response cut from the right to fit max_length. A prompt that leaves no
    room for a response raises; a keep_whole response that does not fit raises TooLong."""
    return _fit_pair(tok, prompt, response, max_length, where, keep_whole)[:2]


def _sft_example(tok, row, limits, where):
    ids, n, cut = _fit_pair(tok, row["prompt"], row["response"], limits["max_length"], where,
                            row.get("keep_whole", False))
    return {"ids": ids, "n_prompt": n, "row": row, "cut": cut}


def _pref_example(tok, row, limits, where, max_length=None):
    L = max_length or limits["max_length"]
    keep = row.get("keep_whole", False)
    cw, nw, cut_w = _fit_pair(tok, row["prompt"], row["chosen"], L, where, keep)
    cl, nl, cut_l = _fit_pair(tok, row["prompt"], row["rejected"], L, where, keep)
    return {"chosen": cw, "n_prompt_chosen": nw, "rejected": cl, "n_prompt_rejected": nl, "row": row,
            "cut": cut_w or cut_l}


def _prompt_example(tok, row, limits, where):
    p = encode_prompt(tok, row["prompt"], where)
    if len(p) >= limits["max_length"]:
        raise DataError(f"{where}: field 'prompt' is {len(p)} tokens, which leaves no room for a "
                        f"response within max_length={limits['max_length']}")
    return {"prompt": p, "row": row}


def _mo_example(tok, row, limits, where):
    """MO-ORPO: the alignment triple and its self-judgement triple row['sj'] (nanoalign/mo_orpo.py sj_triple).
    An SJ triple over sj_max_length drops the whole example (counted: the MO-ORPO paper filtered its
    data to fit the judge prompt)."""
    sj = {**row["sj"], "keep_whole": True}
    align = _pref_example(tok, row, limits, where)
    return {"align": align, "sj": _pref_example(tok, sj, limits, where, limits["sj_max_length"]),
            "row": row, "cut": align["cut"]}


def tokenize_rows(rows, tok, kind, max_length, skip_bad=False, sj_max_length=None, bad=None):
    """Rows -> examples of `kind` (see KINDS). Returns (examples, n_dropped): rows dropped because
    they were bad (with skip_bad) or too long to cut. An example with a response (sft, pref, mo)
    says whether one lost tokens to max_length in its "cut". bad: a list that gets each dropped
    row's "file:line: why", in order."""
    tokenize, limits = kind_of(kind).tokenize, {"max_length": max_length, "sj_max_length": sj_max_length}
    out, dropped = [], 0
    for row in rows:
        where = row.get("_where", "row")
        try:
            out.append(tokenize(tok, row, limits, where))
        except (TooLong, DataError) as e:
            if isinstance(e, DataError) and not skip_bad:
                raise
            dropped += 1
            if bad is not None:
                bad.append(str(e))
    return out, dropped


# -- batching: one function per example kind ------------------------------------------------------------
def collate(seqs, n_prompts, pad_id):
    """Right-padded (B, T) ids, attn, targets and response mask for a list of id lists."""
    T = max(len(s) for s in seqs)
    B = len(seqs)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    attn = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.float32)
    for i, (s, n) in enumerate(zip(seqs, n_prompts)):
        ids[i, :len(s)] = torch.tensor(s)
        attn[i, :len(s)] = 1
        # targets n..len-1 are response tokens; with no prompt tokens (an empty prompt in the raw
        # format) the first token has nothing before it, and tokens 1..len-1 are the targets
        mask[i, max(n - 1, 0):len(s) - 1] = 1
    targets = torch.cat([ids[:, 1:], torch.full((B, 1), pad_id, dtype=torch.long)], 1)
    return {"ids": ids, "attn": attn, "targets": targets, "mask": mask}


def pack(batch):
    """The padding-free layout of a right-padded batch: its real tokens back to back, one (1, N)
    sequence, for a forward in which no matmul runs on a pad (model/model.py PackedRows). `slot`
    (N,) is each token's index in the flattened (B, T) batch, so any mask of the padded layout (the
    response mask, ORPO's prompt + response mask) reads as batch_mask.reshape(-1)[slot];
    `cu_seqlens` (B + 1,) are the rows' boundaries: row b is tokens cu_seqlens[b]:cu_seqlens[b + 1]."""
    slot = batch["attn"].reshape(-1).nonzero().squeeze(1)                  # (N,)
    lengths = batch["attn"].sum(1)                                          # (B,)
    return {"ids": batch["ids"].reshape(-1)[slot][None],                   # (1, N)
            "targets": batch["targets"].reshape(-1)[slot],                  # (N,)
            "slot": slot, "cu_seqlens": torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])}


def _tensor_batch(seqs, n_prompts, n_examples, pad_id, device, examples):
    b = {k: v.to(device) for k, v in collate(seqs, n_prompts, pad_id).items()}
    b["n_examples"] = n_examples
    b["n_tokens"] = int(b["mask"][:n_examples].sum())   # a preference batch counts its chosen rows
    b["n_seen"] = int(b["attn"].sum())                   # tokens through the model, for tok/s
    b["examples"] = examples
    return b


def _sft_batch(examples, pad_id, device):
    return _tensor_batch([e["ids"] for e in examples], [e["n_prompt"] for e in examples],
                         len(examples), pad_id, device, examples)


def _pref_batch(examples, pad_id, device):
    """Chosen rows, then rejected rows (2B)."""
    return _tensor_batch([e["chosen"] for e in examples] + [e["rejected"] for e in examples],
                         [e["n_prompt_chosen"] for e in examples] + [e["n_prompt_rejected"] for e in examples],
                         len(examples), pad_id, device, examples)


def _prompt_batch(examples, pad_id, device):
    b = [e["prompt"] for e in examples]
    return {"prompts": b, "n_examples": len(examples), "n_tokens": 0, "n_seen": sum(map(len, b)),
            "examples": examples}


def _mo_batch(examples, pad_id, device):
    """Two preference batches, 'align' and 'sj', padded separately (the judge prompts are several
    times longer)."""
    al = _pref_batch([e["align"] for e in examples], pad_id, device)
    sj = _pref_batch([e["sj"] for e in examples], pad_id, device)
    return {"align": al, "sj": sj, "n_examples": len(examples), "n_tokens": al["n_tokens"],
            "n_seen": al["n_seen"] + sj["n_seen"], "examples": examples}


def make_batch(examples, kind, pad_id, device="cpu", packed=False):
    """One micro-batch of `kind` on `device`; packed=True adds the padding-free layout (`pack`)
    beside every padded batch in it (a 'mo' batch holds two), which nanoalign.common.batch_logps
    then runs the model on. The padded tensors stay: masks are built in their layout."""
    b = kind_of(kind).batch(examples, pad_id, device)
    if packed:
        for t in [b] + [v for v in b.values() if isinstance(v, dict)]:
            if "attn" in t:
                t["packed"] = pack(t)
    return b


# -- the table ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Kind:
    read: Callable       # (row, where) -> checked row; None: built by a method, not read from files
    tokenize: Callable   # (tok, row, limits, where) -> example
    batch: Callable      # (examples, pad_id, device) -> batch dict
    summary: str         # what a dropped example of this kind means, for the start-up line


KINDS = {
    "sft": Kind(_read_sft, _sft_example, _sft_batch, "bad rows, or judgment targets over --max_length"),
    "pref": Kind(_read_pref, _pref_example, _pref_batch, "bad rows"),
    "prompt": Kind(_read_prompt, _prompt_example, _prompt_batch, "bad rows"),
    "mo": Kind(None, _mo_example, _mo_batch,
               "bad rows, or a self-judgement prompt + answer over --sj_max_length"),
}


def kind_of(kind):
    if kind not in KINDS:
        raise DataError(f"unknown data kind '{kind}'; the kinds are {', '.join(KINDS)}")
    return KINDS[kind]


class BatchOrder:
    """A resumable, seeded order of micro-batches: epoch e is a fresh permutation from (seed, e).
    The only state is `pos`, the number of micro-batches handed out so far (saved in checkpoints)."""

    def __init__(self, n, batch_size, seed, pos=0):
        if n < batch_size:
            raise DataError(f"only {n} training examples for a micro-batch of {batch_size}; "
                            f"lower --batch_size")
        self.n, self.bs, self.seed, self.pos = n, batch_size, seed, pos
        self.per_epoch = n // batch_size  # drop the ragged tail: every micro-batch is full
        self._perm_epoch, self._perm = None, None

    def next(self):
        e, k = divmod(self.pos, self.per_epoch)
        if self._perm_epoch != e:
            g = torch.Generator().manual_seed(self.seed * 100_003 + e)
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g).tolist(), e
        self.pos += 1
        return self._perm[k * self.bs:(k + 1) * self.bs]
