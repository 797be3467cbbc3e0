"""
Data: JSONL rows in the conventions people already have, tokenized, truncated, batched.

  preference  {"prompt": P, "chosen": R, "rejected": R}      (UltraFeedback-binarized, TRL)
  sft         {"prompt": P, "response": R}  or  {"messages": [...]}  (last assistant turn = response)
  prompt      {"prompt": P}   (on-policy methods; any row with a prompt works)
  P, R        a string, or a list of chat messages {"role": ..., "content": ...}
  labels      optional, on preference rows: {objective: "1" | "2" | "equal"} (response 1 = chosen;
              MetaAligner and principle-aware judges use it, nanoalign/meta_aligner.py)

Prompt and response are tokenized separately and concatenated (METHODS.md). The response gets the
EOS token. Truncation to max_length: the prompt loses tokens from the LEFT (the end of the prompt is
what the answer depends on), the response from the RIGHT. A row whose prompt alone fills max_length
has no response token left: that is an error naming the row (or, with skip_bad, a dropped row that is
counted), never a silent 0/0 in a mean.

Batches are right-padded: training rows need no left padding because positions start at 0 anyway.
`targets[b, t]` = ids[b, t + 1]: hidden state t predicts token t + 1, and `mask` marks the targets
that are response tokens.
"""
import json

import torch


class DataError(ValueError):
    """A bad data row; the message names the file, the line and the field."""


def _check_text(v, where, field):
    if isinstance(v, str):
        if not v.strip() and field != "prompt":
            raise DataError(f"{where}: field '{field}' is empty")
        return v
    if isinstance(v, list) and v and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                         and isinstance(m.get("content"), str) for m in v):
        return v
    raise DataError(f"{where}: field '{field}' must be a string or a list of "
                    f"{{\"role\", \"content\"}} messages, got {type(v).__name__}")


def validate_row(row, kind, where):
    """Check one parsed row; returns the normalized row. kind: 'sft' or 'pref'."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if kind == "sft" and "messages" in row:
        msgs = _check_text(row["messages"], where, "messages")
        if isinstance(msgs, str) or not msgs or msgs[-1]["role"] != "assistant":
            raise DataError(f"{where}: field 'messages' must end with an assistant message")
        if not msgs[-1]["content"].strip():
            raise DataError(f"{where}: field 'messages' has an empty final assistant message")
        return {"prompt": msgs[:-1], "response": msgs[-1]["content"]}
    fields = {"sft": ("prompt", "response"), "prompt": ("prompt",)}.get(kind, ("prompt", "chosen", "rejected"))
    out = dict(row)
    for f in fields:
        if f not in row:
            raise DataError(f"{where}: missing field '{f}' (a {kind} row needs {', '.join(fields)})")
        out[f] = _check_text(row[f], where, f)
    return out


def read_jsonl(path, kind, skip_bad=False):
    """Rows of a JSONL file, validated. Returns (rows, n_skipped)."""
    rows, skipped = [], 0
    try:
        f = open(path)
    except OSError as e:
        raise DataError(f"{path}: cannot open ({e.strerror})") from None
    with f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{i}"
            try:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
                row = validate_row(row, kind, where)
                row["_where"] = where
                rows.append(row)
            except DataError:
                if not skip_bad:
                    raise
                skipped += 1
    if not rows:
        raise DataError(f"{path}: no usable rows")
    return rows, skipped


def tokenize_pair(tok, prompt, response, max_length, where="row"):
    """(ids, n_prompt) with the prompt cut from the left and the response from the right."""
    p = tok.encode_prompt(prompt)
    r = tok.encode_response(response)
    if len(p) >= max_length:
        raise DataError(f"{where}: field 'prompt' is {len(p)} tokens, which leaves no room for the "
                        f"response within max_length={max_length}")
    r = r[:max_length - len(p)] if len(p) + len(r) > max_length else r
    return p + r, len(p)


def _pref_example(tok, row, max_length, where):
    cw, nw = tokenize_pair(tok, row["prompt"], row["chosen"], max_length, where)
    cl, nl = tokenize_pair(tok, row["prompt"], row["rejected"], max_length, where)
    return {"chosen": cw, "n_prompt_chosen": nw, "rejected": cl, "n_prompt_rejected": nl, "row": row}


def tokenize_rows(rows, tok, kind, max_length, skip_bad=False, sj_max_length=None):
    """Rows -> examples, per kind:
      sft     {ids, n_prompt}
      pref    {chosen, rejected, n_prompt_chosen, n_prompt_rejected}
      mo      {align: <pref example>, sj: <pref example of row['sj']>} (MO-ORPO, nanoalign/judge.py)
      prompt  {prompt: ids} (on-policy methods sample their own responses)
    Returns (examples, n_dropped). A self-judgement triple whose prompt + answer exceeds
    sj_max_length drops its whole example (counted, not an error: the MO-ORPO paper filtered its
    data to fit the judge prompt in 6k tokens)."""
    out, skipped = [], 0
    for row in rows:
        where = row.get("_where", "row")
        try:
            if kind == "sft":
                ids, n = tokenize_pair(tok, row["prompt"], row["response"], max_length, where)
                out.append({"ids": ids, "n_prompt": n, "row": row})
            elif kind == "pref":
                out.append(_pref_example(tok, row, max_length, where))
            elif kind == "prompt":
                p = tok.encode_prompt(row["prompt"])
                if len(p) >= max_length:
                    raise DataError(f"{where}: field 'prompt' is {len(p)} tokens, which leaves no "
                                    f"room for a response within max_length={max_length}")
                out.append({"prompt": p, "row": row})
            else:
                sj = row["sj"]
                n_sj = max(len(tok.encode_prompt(sj["prompt"])) + len(tok.encode_response(r))
                           for r in (sj["chosen"], sj["rejected"]))
                if n_sj > sj_max_length:
                    skipped += 1
                    continue
                out.append({"align": _pref_example(tok, row, max_length, where),
                            "sj": _pref_example(tok, sj, sj_max_length, where), "row": row})
        except DataError:
            if not skip_bad:
                raise
            skipped += 1
    return out, skipped


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
        mask[i, n - 1:len(s) - 1] = 1       # targets n..len-1 are response tokens
    targets = torch.cat([ids[:, 1:], torch.full((B, 1), pad_id, dtype=torch.long)], 1)
    return {"ids": ids, "attn": attn, "targets": targets, "mask": mask}


def make_batch(examples, kind, pad_id, device="cpu"):
    """One micro-batch on `device`. Preference batches stack chosen rows, then rejected rows (2B).
    An 'mo' batch holds two preference batches, 'align' and 'sj' (padded separately: the judge
    prompts are several times longer); a 'prompt' batch is just the prompt id lists."""
    if kind == "mo":
        al = make_batch([e["align"] for e in examples], "pref", pad_id, device)
        sj = make_batch([e["sj"] for e in examples], "pref", pad_id, device)
        return {"align": al, "sj": sj, "n_examples": len(examples), "n_tokens": al["n_tokens"],
                "n_seen": al["n_seen"] + sj["n_seen"], "examples": examples}
    if kind == "prompt":
        b = [e["prompt"] for e in examples]
        return {"prompts": b, "n_examples": len(examples),
                "n_tokens": 0, "n_seen": sum(map(len, b)), "examples": examples}
    if kind == "sft":
        b = collate([e["ids"] for e in examples], [e["n_prompt"] for e in examples], pad_id)
    else:
        b = collate([e["chosen"] for e in examples] + [e["rejected"] for e in examples],
                    [e["n_prompt_chosen"] for e in examples] + [e["n_prompt_rejected"] for e in examples],
                    pad_id)
    b = {k: v.to(device) for k, v in b.items()}
    B = len(examples)
    b["n_examples"] = B
    b["n_tokens"] = int(b["mask"][:B].sum()) if kind == "pref" else int(b["mask"].sum())
    b["n_seen"] = int(b["attn"].sum())   # tokens through the model, for tok/s
    b["examples"] = examples
    return b


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

    def epoch(self):
        return self.pos // self.per_epoch

    def next(self):
        e, k = divmod(self.pos, self.per_epoch)
        if self._perm_epoch != e:
            g = torch.Generator().manual_seed(self.seed * 100_003 + e)
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g).tolist(), e
        self.pos += 1
        return self._perm[k * self.bs:(k + 1) * self.bs]
