"""
Data: JSONL files in the conventions people already have, read into rows, tokenized, truncated,
batched. What a row may hold, and its checks, is nanoalign/rows.py.

Every kind is one row of the table `KINDS` at the bottom: how a row of that kind is checked (its
reader in rows.py), how it becomes token ids, how examples become a batch. A method whose loss eats
examples of its own adds its kind from its file (`add_kind`: MO-ORPO's 'mo', in nanoalign/mo_orpo.py).
An unknown kind is an error (a KeyError from the table is turned into a DataError naming the
kinds), never a fall-through.

Prompt and response are tokenized separately and concatenated (docs/methods.md#sequence-log-probabilities).
The response ends with the chat template's end of turn. Truncation to max_length: the response loses
tokens from the RIGHT (the example's "cut" says so; train.py counts and names those rows). A prompt
that leaves no room for a response (len(prompt) >= max_length) is a bad row: an error naming the
row, or with skip_bad a dropped row that is counted; never a silent 0/0 in a mean. A row marked
"keep_whole" (judgment targets, whose label must be scored) is dropped and counted, not cut, when
its response does not fit.

Batches are right-padded: training rows need no left padding because positions start at 0 anyway.
`targets[b, t]` = ids[b, t + 1]: hidden state t predicts token t + 1, and `mask` marks the targets
that are response tokens. A packed batch (make_batch(..., packed=True), train.py --packed) adds the
same rows back to back without padding (`pack`); the padded tensors are its readable reference.
"""
import json
from dataclasses import dataclass
from typing import Callable

import torch

from nanoalign.rows import check_system, read_pref, read_prompt, read_sft
from nanoalign.textfile import DataError, NotJSONL, decode_line, malformed, not_jsonl, raw_lines


# -- reading: a file's lines, each checked as a row of its kind (nanoalign/rows.py) ------------------
def validate_row(row, kind, where):
    """Check one parsed row of a row kind ('sft', 'pref' or 'prompt'), or by a reader of one's own,
    (row, where) -> row (the judge's pairs: rows.read_pair); returns the normalized row."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    read = kind if callable(kind) else kind_of(kind).read
    if read is None:
        raise DataError(f"{where}: '{kind}' examples are built by a method, not read from a file")
    check_system(row, where)
    return read(row, where)


def parse_line(path, line, where, first):
    """A line's JSON value; malformed JSON is a bad row naming its column (`malformed`: a trailing
    comma named as one). The file's first line that
    is not blank, when it is malformed or an array (json.dump(rows, f) writes one line), may say that the
    file is no JSONL at all (`not_jsonl`: a JSON document, CSV): then the file is wrong, not that row."""
    try:
        value, error = json.loads(line), None
    except json.JSONDecodeError as e:
        value, error = None, malformed(line, e)
    if first and (error or isinstance(value, list)) and (what := not_jsonl(path, line, error is None)):
        raise NotJSONL(f"{where}: the file looks like {what}")
    if error:
        raise DataError(f"{where}: {error}")
    return value


def read_jsonl(path, kind, skip_bad=False, check=None, bad=None):
    """Rows of a JSONL file, validated as `kind` (validate_row). Returns (rows, n_skipped). Each line
    is decoded on its own, so a line that is not UTF-8 is one bad row, skipped and counted with
    skip_bad; a file that is no JSONL (no text, a JSON document, CSV) is one error, with skip_bad
    too. check: a method's own (row, where) -> row check after the kind's (Method.check_row: the
    labels MetaAligner reads), run here so that a row it refuses is skipped and counted like any
    other bad row. bad: a list that gets each skipped row's error, "file:line: why", in file order
    (train.py names them)."""
    rows, skipped, seen, first_bad = [], 0, False, None
    for where, raw in raw_lines(path):
        try:
            # without its newline: json.loads counts columns from the last one it sees, so an error at
            # a line's end (a missing '}') was 'column 1' of the line after it
            line = decode_line(raw, where).rstrip("\r\n")
            if not line.strip():
                continue
            first, seen = not seen, True     # blank lines before a JSON document do not hide it
            row = validate_row(parse_line(path, line, where, first), kind, where)
            if check is not None:
                row = check(row, where)
            row["_where"] = where
            rows.append(row)
        except DataError as e:
            if not skip_bad or isinstance(e, NotJSONL):
                raise
            seen = True                      # a line not UTF-8 too: the file's first row, a bad one
            skipped += 1
            first_bad = first_bad or str(e)
            if bad is not None:
                bad.append(str(e))
    if not rows:     # all bad under skip_bad: why, or the run stops before it names a skipped row
        why = f"all {skipped} are bad, the first {first_bad}" if skipped else "the file is empty (or blank lines only)"
        raise DataError(f"{path}: no usable rows: {why}")
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


def no_room(where, n, response, max_length):
    """The error of a prompt of n tokens that leaves no room for `response` within max_length (a
    prompt is never cut), with the two ways on: train.py's flags, as train.py's start names them."""
    return DataError(f"{where}: field 'prompt' is {n} tokens, which leaves no room for {response} within "
                     f"max_length={max_length} (raise --max_length, or use --skip_bad_rows to drop such rows)")


def _fit_pair(tok, prompt, response, max_length, where="row", keep_whole=False):
    """(ids, n_prompt, cut): tokenize_pair's, and whether the response lost tokens."""
    p, r = encode_pair(tok, prompt, response, where)
    if keep_whole and len(p) + len(r) > max_length:
        raise TooLong(f"{where}: prompt + response is {len(p) + len(r)} tokens, over the limit of "
                      f"{max_length}, and this example is never cut")
    if len(p) >= max_length:
        raise no_room(where, len(p), "the response", max_length)
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


def _pref_example(tok, row, limits, where):
    L = limits["max_length"]
    keep = row.get("keep_whole", False)
    cw, nw, cut_w = _fit_pair(tok, row["prompt"], row["chosen"], L, where, keep)
    cl, nl, cut_l = _fit_pair(tok, row["prompt"], row["rejected"], L, where, keep)
    return {"chosen": cw, "n_prompt_chosen": nw, "rejected": cl, "n_prompt_rejected": nl, "row": row,
            "cut": cut_w or cut_l}


def _prompt_example(tok, row, limits, where):
    p = encode_prompt(tok, row["prompt"], where)
    if len(p) >= limits["max_length"]:
        raise no_room(where, len(p), "a response", limits["max_length"])
    return {"prompt": p, "row": row}


def tokenize_rows(rows, tok, kind, max_length, skip_bad=False, bad=None, **limits):
    """Rows -> examples of `kind` (see KINDS). Returns (examples, n_dropped): rows dropped because
    they were bad (with skip_bad) or too long to cut. An example with a response (sft, pref, mo)
    says whether one lost tokens to max_length in its "cut". bad: a list that gets each dropped
    row's "file:line: why", in order. limits: a kind's own length limits beside max_length
    (MO-ORPO's sj_max_length; Method.tokenize_options gives them), handed to its tokenize."""
    tokenize, limits = kind_of(kind).tokenize, {"max_length": max_length, **limits}
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
    "sft": Kind(read_sft, _sft_example, _sft_batch, "bad rows, or judgment targets over --max_length"),
    "pref": Kind(read_pref, _pref_example, _pref_batch, "bad rows"),
    "prompt": Kind(read_prompt, _prompt_example, _prompt_batch, "bad rows"),
}


def add_kind(name, kind):
    """A method's own example kind, added from its file (beside its `register`): a name taken is
    refused, so a copied method file cannot replace another's kind without a word."""
    if name in KINDS:
        raise ValueError(f"data kind '{name}' exists already; give the new kind another name")
    KINDS[name] = kind


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
