r"""
Sample from a checkpoint directory (Hugging Face layout: what train.py writes, or any Llama/Mistral).

examples:
  python sample.py --init_from checkpoints/smollm2-135m --prompt "What is the capital of France?"
  python sample.py --init_from out/orpo/ckpt --prompts_file prompts.txt
  python sample.py --init_from out/self_judge/ckpt --prompts_file prompts.jsonl
  python sample.py --init_from out/orpo/ckpt --prompt "What is 7 + 5?" --temperature 0.8 \
      --num_samples 3
  python sample.py --init_from out/self_judge/ckpt --prompt "What is 7 + 5?" --best_of 8
  python sample.py --init_from out/self_judge/ckpt --prompt "What is 7 + 5?" --best_of 4 \
      --judge_template compact_principle --principles "correct:the sum is right"
  python sample.py --aligner out/meta_aligner/preference/ckpt --answers_file answers.jsonl \
      --objectives "correct,format:the answer is a sentence that ends with a period"
  python sample.py --init_from out/orpo/ckpt --prompt "What is 7 + 5?" --aligner DIR \
      --objectives concise

Decoding is greedy unless --temperature is above 0. Prompts are rendered through the checkpoint's
chat template unless --raw. The prompts (x --num_samples) go through left-padded generation with
the KV cache, --batch_size at a time, and each batch is printed when it is done. Ctrl-C, while
the checkpoints load or later, stops with one line on stderr saying how much was printed (exit 130).
"""
import os
import signal
import sys


def stopped_while_starting(signum, frame):
    # os._exit, not SystemExit: an exception raised here lands inside whichever module is importing,
    # and one that catches everything swallowed it in CI (the program then ran to its end, exit 0)
    print("stopped (Ctrl-C) while starting: nothing printed", file=sys.stderr, flush=True)
    os._exit(130)


if __name__ == "__main__":    # Ctrl-C in the seconds torch takes to import: one line, not a traceback
    signal.signal(signal.SIGINT, stopped_while_starting)

# the imports below come after that handler: torch's import is what it covers
import argparse
import contextlib
import json
import math
import time

import torch

from model.checkpoint import CheckpointError, load, read_json
from model.tokenizer import NoChatTemplate
from model.generate import generate
from nanoalign.checkpoint import trained_config
from nanoalign.onpolicy import judging_overridden, principles_for, sample as sample_responses
from nanoalign.judge import (JUDGE_TEMPLATE, LIKELIHOOD, LIKELIHOODS, TEMPLATES, JudgeError, best_of,
                             check_template, judging, recorded_judging)
from nanoalign.meta_aligner import OBJECTIVES_FILE, correct, parse_objectives
from nanoalign.compute import FAST_MIN_PARAMS, autocast, device_problem
from model.chat_template import CHAT_FORMAT_HELP, CHAT_FORMATS
from nanoalign.data import read_jsonl, validate_row
from nanoalign.rows import FIELDS, check_response, check_text, check_turns_before_answer, misspelled
from nanoalign.suggest import ArgumentParser
from nanoalign.textfile import DataError, decode_line, malformed, raw_lines
from nanoalign.tasks.arith import OBJECTIVES


def build_parser():
    """The command line. Every flag's help ends with its default; prefixes of flags are errors, and
    parse_args's refusal of an unknown flag names the closest flag."""
    ap = ArgumentParser(description=__doc__, allow_abbrev=False,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init_from", default=None, metavar="DIR",
                    help="checkpoint directory to sample from (config.json, model.safetensors, "
                    "tokenizer.json; a LoRA adapter directory is loaded on top of its base) "
                    "(default: none; required unless --aligner corrects an --answers_file)")
    ap.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                    help="a prompt; repeat the flag for several (default: none)")
    ap.add_argument("--prompts_file", default=None, metavar="FILE",
                    help="prompts added after the --prompt ones: a JSONL file of {\"prompt\": ...} "
                    "rows (the rows an on-policy method trains on, other fields beside it ignored; "
                    "a prompt is a string or a list of chat messages), or a text file with one "
                    "prompt per line; a file with a line that is a JSON object is read as JSONL, "
                    "and every other line of it must be one too (default: none)")
    ap.add_argument("--raw", action="store_true",
                    help="feed prompts as-is, without the chat template (default: off)")
    ap.add_argument("--chat_format", default="", choices=CHAT_FORMATS, metavar="NAME",
                    help=CHAT_FORMAT_HELP + ". It is --init_from's, so --best_of's judge speaks it "
                    "too; --aligner keeps its own (default: '')")
    ap.add_argument("--system", default=None, metavar="TEXT",
                    help="system message for the chat template. It is part of the conversation "
                    "answered, so --best_of's judge and --aligner are shown it too, as 'System: TEXT' "
                    "before 'User: PROMPT' (as they read a data row with a system message), and the "
                    "rows --aligner prints hold that conversation as their prompt (default: the "
                    "checkpoint's own, which the judge and the aligner are not shown)")
    ap.add_argument("--temperature", type=float, default=0.0, metavar="T",
                    help="sampling temperature; 0 is greedy decoding (the most likely token at "
                    "each step, so the same answer every run); above 0 samples, and --top_k, "
                    "--top_p, --seed apply. --best_of always samples, at 1.0 when this is 0 "
                    "(default: %(default)s)")
    ap.add_argument("--top_p", type=float, default=None, metavar="P",
                    help="sampling only: keep the most likely tokens whose probabilities sum to "
                    "this, in (0, 1] (default: none, no nucleus cut)")
    ap.add_argument("--top_k", type=int, default=None, metavar="K",
                    help="sampling only: keep the k most likely tokens (default: none, no cut)")
    ap.add_argument("--max_new_tokens", type=int, default=128, metavar="N",
                    help="most tokens to generate per sample (and per --best_of candidate and "
                    "--aligner correction); a sample also stops at EOS, or where the model's "
                    "context is full (default: %(default)s)")
    ap.add_argument("--num_samples", type=int, default=1, metavar="N",
                    help="completions per prompt; with greedy decoding they are all the same, so "
                    "set --temperature too (default: %(default)s)")
    ap.add_argument("--batch_size", type=int, default=32, metavar="N",
                    help="samples decoded together: the prompts (x --num_samples) go through "
                    "generation N at a time (and --aligner corrects N at a time; not --best_of, "
                    "which samples every prompt's candidates at once), each batch printed "
                    "as soon as it is done, so memory stays bounded (a batch's KV cache grows with N) "
                    "and Ctrl-C loses only the batch in flight. Greedy samples are the same at any N "
                    "up to float rounding; drawn ones follow --seed and N (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=1337, metavar="N",
                    help="seed of the sampling random generator (default: %(default)s)")
    ap.add_argument("--best_of", type=int, default=1, metavar="N",
                    help="self-rejection: sample N per prompt and print the winner of a tournament "
                    "(N-1 judgments) with this checkpoint as judge; 1 turns it off "
                    "(default: %(default)s)")
    ap.add_argument("--judge_template", default=None, metavar="NAME",
                    help=f"judgment template for --best_of, one of {', '.join(TEMPLATES)} "
                    f"(nanoalign/judge.py) (default: the one the checkpoint trained with, else "
                    f"'{JUDGE_TEMPLATE}', as for an on-policy run's judge)")
    ap.add_argument("--principles", default=None, metavar="LIST",
                    help="for --best_of with a principle template: name:description,... to judge "
                    "under, each match decided by win rate; a description may hold commas, only a "
                    "comma followed by a new 'name:' starts the next principle (a name is letters, "
                    "digits, _ and -) (default: the principles kept in the checkpoint, its "
                    "principles.json)")
    ap.add_argument("--likelihood", default=None, choices=sorted(LIKELIHOODS),
                    help="for --best_of, how the judge's label probabilities become p(a > b), a "
                    f"choice: 'vocab' = {LIKELIHOODS['vocab']}; 'pair' = {LIKELIHOODS['pair']} "
                    f"(default: the rule the checkpoint's method judged by, else '{LIKELIHOOD}', "
                    "Self-Judge's, whose self-rejection this is)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    metavar="DEV",
                    help="cpu, cuda or cuda:N (default: cuda when a GPU is visible, else cpu; "
                    "here %(default)s)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                    help="'auto' = float32 weights, with the matmuls in bfloat16 (autocast) on a GPU with "
                    "bf16 matmuls (sm_80 and later), "
                    f"or for a model of {FAST_MIN_PARAMS // 10**6}M parameters or more on a CPU with "
                    "bf16 instructions (a decode step mostly reads weights: bf16 halves the bytes; "
                    "docs/performance.md measures it); else plain "
                    "float32. 'float32', 'bfloat16', 'float16': the weights loaded in that dtype, no "
                    "autocast (default: %(default)s)")
    ap.add_argument("--compile", action="store_true",
                    help="decode with the compiled static-cache step (torch.compile; gpt-fast "
                    "style, model/generate.py): fewer seconds per token, but the first call "
                    "compiles, a minute or two on a CPU, so it pays for long or repeated "
                    "generations; greedy tokens equal the eager decode's up to float rounding. "
                    "Plain sampling only, not --best_of or --aligner (default: off)")
    ap.add_argument("--aligner", default=None, metavar="DIR",
                    help="MetaAligner checkpoint: correct the answers (of --init_from, its "
                    "--best_of winners, or of --answers_file) towards --objectives; the policy is "
                    "untouched, and the correction is decoded greedily (--temperature and the "
                    "other sampling flags apply to the policy's answers) (default: none, no "
                    "correction)")
    ap.add_argument("--objectives", default="", metavar="LIST",
                    help="for --aligner: comma-separated name[:description]; '' = the objectives the "
                    "aligner trained on (its objectives.json; an aligner without one: the arith "
                    "task's correct,concise,format). A bare name takes its description from there "
                    "too. A description may hold commas: only a comma followed by a new 'name:' (a "
                    "name is letters, digits, _ and -) or one after a bare name starts the next "
                    "objective, so after a description write a known name as 'name:'. A line on "
                    "stderr names the objectives corrected towards (default: the aligner's)")
    ap.add_argument("--answers_file", default=None, metavar="FILE",
                    help="for --aligner: JSONL of {prompt, answer} rows from any source, corrected "
                    "instead of sampling from --init_from (default: none)")
    return ap


def parse_args(argv=None):
    ap = build_parser()
    a = ap.parse_args(argv)
    for flag in ("init_from", "prompts_file", "aligner", "answers_file"):
        if getattr(a, flag) == "":
            ap.error(f"--{flag} is empty; give a path")
    if a.init_from is None and not (a.aligner and a.answers_file):
        ap.error("--init_from is required (unless --aligner corrects an --answers_file)")
    # the numbers
    for flag in ("temperature", "top_p"):
        if getattr(a, flag) is not None and not math.isfinite(getattr(a, flag)):
            ap.error(f"--{flag} must be a finite number, not {getattr(a, flag)}")
    if a.temperature < 0:
        ap.error("--temperature must be >= 0")
    if a.top_p is not None and not 0 < a.top_p <= 1:
        ap.error("--top_p must be in (0, 1]")
    if a.top_k is not None and a.top_k < 1:
        ap.error("--top_k must be >= 1 (leave it out for no cut)")
    if min(a.num_samples, a.max_new_tokens, a.best_of, a.batch_size) < 1:
        ap.error("--num_samples, --best_of, --max_new_tokens and --batch_size must be >= 1")
    # the device: checked here, so a typo is not a torch traceback after the model has loaded
    if why := device_problem(a.device):
        ap.error(why)
    # flags that would otherwise be silently ignored
    if a.best_of > 1 and a.raw:
        ap.error("--best_of judges through the chat template; drop --raw")
    if a.best_of > 1 and a.num_samples > 1:
        ap.error("--best_of N samples N per prompt and prints one winner; drop --num_samples")
    for flag in ("judge_template", "principles", "likelihood"):
        if getattr(a, flag) is not None and a.best_of == 1:
            ap.error(f"--{flag} applies only with --best_of N (N > 1)")
    if a.best_of > 1 and not a.aligner and a.batch_size != ap.get_default("batch_size"):
        ap.error("--batch_size applies to plain sampling and --aligner; --best_of samples every "
                 "prompt's N candidates in one batch")
    if a.compile and (a.best_of > 1 or a.aligner):
        ap.error("--compile applies to plain sampling only; drop it with --best_of or --aligner")
    if a.answers_file and not a.aligner:
        ap.error("--answers_file applies only with --aligner (it holds the answers to correct)")
    if a.answers_file and (a.init_from or a.prompt or a.prompts_file):
        ap.error("--answers_file gives the prompts and answers to correct; drop --init_from, "
                 "--prompt and --prompts_file")
    if a.answers_file:                   # the answers are given: nothing is sampled
        extra = [f"--{k}" for k in ("best_of", "num_samples", "temperature", "top_k", "top_p", "seed",
                                     "system", "raw", "chat_format") if getattr(a, k) != ap.get_default(k)]
        if extra:
            ap.error(f"{', '.join(extra)} shape(s) the policy's sampling, and --answers_file gives the "
                     f"answers; drop them")
    if a.objectives != ap.get_default("objectives") and not a.aligner:
        ap.error("--objectives applies only with --aligner")
    if a.system is not None and a.raw:
        ap.error("--system goes into the chat template, which --raw skips; drop one of them")
    if a.chat_format and a.raw:
        ap.error("--chat_format goes into the chat template, which --raw skips; drop one of them")
    if a.temperature == 0 and a.best_of == 1:
        for flag in ("top_k", "top_p"):
            if getattr(a, flag) is not None:
                ap.error(f"--{flag} applies only when sampling (--temperature above 0, or "
                         f"--best_of); at --temperature 0 decoding is greedy")
    return a


def read_lines(path, flag):
    """[("file:N", text)] of a UTF-8 text file (a BOM allowed), read as the data files are
    (nanoalign/textfile.py `raw_lines`, `decode_line`); errors name the flag, the file and the line."""
    try:
        return [(where, decode_line(raw, where).rstrip("\r\n")) for where, raw in raw_lines(path)]
    except DataError as e:
        sys.exit(f"error: {flag} {e}")


def read_prompts(a):
    """The prompts of --prompts_file: JSONL rows {"prompt": P} when any line is a JSON object, read
    as train.py reads the on-policy methods' rows (nanoalign/rows.py, the 'prompt' kind: P a string
    or chat messages), else each non-blank line as one plain-text prompt. A file of both is an
    error: a row read as text would be answered as the JSON it is, and a text line in a JSONL file
    is most likely a broken row. Errors name the file and the line."""
    lines = [(where, line) for where, line in read_lines(a.prompts_file, "--prompts_file") if line.strip()]
    rows = [(where, *json_object(line)) for where, line in lines]
    first = next((where for where, row, _ in rows if row is not None), None)
    if first is None:
        return [line for _, line in lines]
    prompts = []
    for where, row, why in rows:
        try:
            if row is None:
                raise DataError(f"{where}: not a JSON object{why}, and line {first.rsplit(':', 1)[1]} "
                                f"is one: a --prompts_file is JSONL rows {{\"prompt\": ...}} or plain "
                                f"text, one prompt per line, not both")
            p = validate_row(row, "prompt", where)["prompt"]
            if isinstance(p, list) and a.raw:
                raise DataError(f"{where}: a prompt of chat messages needs the chat template, which "
                                f"--raw skips; drop --raw")
            if isinstance(p, list) and a.system is not None and p[0]["role"] == "system":
                raise DataError(f"{where}: the prompt has a system message of its own; drop --system")
        except DataError as e:
            sys.exit(f"error: --prompts_file {e}")
        prompts.append(p)
    return prompts


def json_object(line):
    """(the JSON object a line holds, '') or (None, why not, for an error: '' for plain text or
    JSON of another type, the parser's complaint for a line that begins as an object)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:     # a trailing comma said as train.py's data reader says it
        broken = line.lstrip().startswith("{")
        return None, f": {malformed(line, e)}" if broken else ""
    return (row, "") if isinstance(row, dict) else (None, "")


def answer_row(row, where):
    """One --answers_file row, {prompt, answer}, checked as a preference row's prompt and response
    are (nanoalign/rows.py): what MetaAligner's template reads. A missing field names a key that
    looks like a misspelling of it, as a training row's does."""
    for f in ("prompt", "answer"):
        if f not in row:
            typo = misspelled(row, [f], FIELDS + ("answer",))[1]
            raise DataError(f"{where}: missing field '{f}' (an --answers_file row needs prompt, answer){typo}")
    prompt = check_text(row["prompt"], where, "prompt")
    answer = check_response(check_text(row["answer"], where, "answer"), where, "answer")
    check_turns_before_answer(prompt, answer, where, "answer")
    return {"prompt": prompt, "answer": answer}


def read_answers(path):
    """(prompts, answers) from a JSONL file of {prompt, answer} rows, read as train.py reads its data
    (nanoalign/data.py read_jsonl: a BOM, blank lines, errors naming file and line)."""
    try:
        rows, _ = read_jsonl(path, answer_row)
    except DataError as e:
        sys.exit(f"error: --answers_file {e}")
    return [r["prompt"] for r in rows], [r["answer"] for r in rows]


@contextlib.contextmanager
def stops_on_ctrl_c(printed):
    """Ctrl-C inside: no traceback, but one line on stderr saying what was printed (`printed()`),
    and exit code 130 (128 + SIGINT, what a shell reports for a program it interrupted)."""
    try:
        yield
    except KeyboardInterrupt:
        print(f"--- stopped (Ctrl-C): {printed()}", file=sys.stderr)
        sys.exit(130)


def load_for_sampling(a, path, chat_format=None):
    """(model, tokenizer) from `path` in --dtype's weight dtype (float32 for 'auto'), speaking
    `chat_format` if one is named. main loads every checkpoint before it prints anything, so Ctrl-C
    here has printed nothing."""
    with stops_on_ctrl_c(lambda: f"nothing printed (loading {path})"):
        return load(path, torch.float32 if a.dtype == "auto" else getattr(torch, a.dtype), a.device,
                    chat_format)


def precision(a, model):
    """The context the model samples in: under --dtype auto, decoding's rule (nanoalign/compute.py
    `autocast_dtype`: bfloat16 autocast or plain float32); else the weights' dtype."""
    return autocast(a, model, decoding=True) if a.dtype == "auto" else contextlib.nullcontext()


def conversation(a, prompt):
    """A prompt as the judge (--best_of) and the aligner are shown it: with --system, the
    conversation the policy answered, which they read as they read a data row with a system message
    ('System: ...' then 'User: ...', nanoalign.judge.prompt_text), a --prompts_file row's messages
    after it. Without it, the prompt alone:
    the checkpoint's own default system message is its chat template's, no part of the question,
    as it is not for a training row without one."""
    if a.system is None:
        return prompt
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return [{"role": "system", "content": a.system}] + turns


def aligner_for(a):
    """MetaAligner inference: a function that corrects a list of (prompt, answer) pairs and prints
    each as {prompt, answer, corrected}, with the aligner loaded once for all the batches it is given."""
    trained = os.path.join(a.aligner, OBJECTIVES_FILE)        # what the aligner trained on
    try:
        if os.path.exists(trained):
            known, source = read_json(trained), f"those it trained on: its {OBJECTIVES_FILE}"
        else:   # a run from before it was kept: the arith task's three, which other data never saw
            known, source = OBJECTIVES, f"the arith task's: the aligner has no {OBJECTIVES_FILE}"
        objs = parse_objectives(a.objectives, known) if a.objectives else list(known.items())
    except (ValueError, CheckpointError) as e:          # its objectives file names itself
        sys.exit(f"error: {e}")
    try:
        aligner, atok = load_for_sampling(a, a.aligner)
    except CheckpointError as e:
        sys.exit(f"error: --aligner {e}")
    # said, as --best_of names its template
    print(f"--- the aligner corrects towards {', '.join(n for n, _ in objs)} "
          f"({'--objectives' if a.objectives else source})", file=sys.stderr)

    def fix(pairs):
        prompts, answers = [p for p, _ in pairs], [y for _, y in pairs]
        try:
            with precision(a, aligner):
                fixed = correct(aligner, atok, prompts, answers, objs, a.max_new_tokens, a.batch_size)
        except ValueError as e:          # an edit prompt longer than the aligner's context, say
            sys.exit(f"error: --aligner: {e}")
        for p, y, z in zip(prompts, answers, fixed):
            print(json.dumps({"prompt": p, "answer": y, "corrected": z}), flush=True)
        return fixed
    return fix


def in_batches(rows, a, run):
    """run(batch) over `rows` --batch_size at a time, the results joined. Ctrl-C stops between the
    printed batches: the count of what was printed goes to stderr, exit code 130."""
    out = []
    with stops_on_ctrl_c(lambda: f"{len(out)} of {len(rows)} samples printed"):
        for i in range(0, len(rows), a.batch_size):
            out += run(rows[i:i + a.batch_size])
    return out


def main(argv=None):
    a = parse_args(argv)
    if a.aligner:                        # a policy would "correct" by answering the edit prompt
        method = trained_config(a.aligner).get("method", "meta_aligner")
        if method != "meta_aligner":
            sys.exit(f"error: --aligner {a.aligner}: a '{method}' checkpoint (its state.json), "
                     f"not a MetaAligner; train one with train.py --method meta_aligner")
    if a.aligner and a.answers_file:
        prompts, answers = read_answers(a.answers_file)
        fix = aligner_for(a)
        return in_batches(list(zip(prompts, answers)), a, fix)
    prompts = list(a.prompt)
    if a.prompts_file:
        prompts += read_prompts(a)
    if not prompts:
        sys.exit(f"error: --prompts_file {a.prompts_file}: no prompts (every line is blank)"
                 if a.prompts_file else "error: give at least one --prompt or a --prompts_file")
    try:
        model, tok = load_for_sampling(a, a.init_from, a.chat_format or None)
    except CheckpointError as e:
        sys.exit(f"error: --init_from {e}")
    if tok.template is None and not a.raw:   # said now, naming this flag, not at the first prompt
        sys.exit(f"error: {NoChatTemplate(a.init_from, how='--chat_format')}")
    if tok.replaced:                         # obeyed, but not the prompts the checkpoint learned
        print(f"note: --chat_format {a.chat_format} replaces the checkpoint's own chat template "
              f"({tok.replaced}), with whatever it adds (a default system prompt, say)", file=sys.stderr)
    fix = aligner_for(a) if a.aligner else None   # loaded, its --objectives read, before any sampling
    if a.best_of > 1:
        try:
            with precision(a, model):
                winners = best_of_main(a, model, tok, prompts)
        except ValueError as e:          # a prompt longer than the model's context, say
            sys.exit(f"error: --best_of: {e}")
        if fix:                          # the tournament's winners are the answers to correct
            pairs = [(conversation(a, p), tok.decode(w)) for p, w in zip(prompts, winners)]
            return in_batches(pairs, a, fix)
        return winners
    g = torch.Generator(device=a.device).manual_seed(a.seed)
    ids = [tok.encode(p) if a.raw else tok.encode_prompt(p, a.system) for p in prompts]
    rows = [(i, j, ids[i]) for i in range(len(ids)) for j in range(a.num_samples)]  # (prompt, sample, ids)
    # the compiled step is compiled per batch size: a smaller last batch is padded to the others'
    # size with copies of its last row, whose samples are dropped
    pad_to = a.batch_size if a.compile and len(rows) > a.batch_size else 0
    seconds, tokens, cut = 0.0, 0, 0

    def run(batch):
        nonlocal seconds, tokens, cut
        t0 = time.time()
        try:
            with precision(a, model):
                outs = generate(model, [r[2] for r in batch] + [batch[-1][2]] * (pad_to - len(batch)),
                                a.max_new_tokens, tok.stop_ids, a.temperature, a.top_k, a.top_p, g,
                                tok.pad_id or 0, compiled=a.compile)[:len(batch)]
        except ValueError as e:
            sys.exit(f"error: {e}")
        seconds += time.time() - t0
        tokens += sum(len(o) for o in outs)
        # generate() stops every row where the context is full, silently: a row without a stop
        # token that is shorter than --max_new_tokens was cut there
        cut += sum(1 for o in outs if len(o) < a.max_new_tokens and not (o and o[-1] in tok.stop_ids))
        if fix:
            fix([(conversation(a, prompts[i]), tok.decode(o)) for (i, _, _), o in zip(batch, outs)])
            return outs
        for (i, j, _), out in zip(batch, outs):
            print(f"--- prompt {i} sample {j}: {prompts[i]!r}")
            print(tok.decode(out), flush=True)
        return outs
    outs = in_batches(rows, a, run)
    if cut:
        print(f"--- {cut} of {len(outs)} samples cut short by the model's context ("
              f"{model.cfg.max_seq_len} tokens) before --max_new_tokens {a.max_new_tokens}",
              file=sys.stderr)
    if not fix:
        print(f"--- {tokens} tokens in {seconds:.2f}s ({tokens / seconds:.1f} tok/s)", file=sys.stderr)
    return outs


def best_of_main(a, model, tok, prompts):
    """Self-rejection (Self-Judge sec. 3.3): N samples, a single-elimination tournament, the winner.
    The checkpoint judges as it was trained to: its template, its method's likelihood rule, and under
    a principle template the principles kept with it (or --principles), combined by win rate."""
    try:          # --judge_template / --likelihood, else as the checkpoint records, else the default
        used = judging(a.init_from, {"judge_template": a.judge_template, "likelihood": a.likelihood})
        t, likelihood = check_template(tok, TEMPLATES[used["judge_template"]]), used["likelihood"]
        principles = principles_for(t, a.principles, a.init_from)
    except JudgeError as e:
        sys.exit(f"error: {e}")
    if note := judging_overridden(a.init_from, recorded_judging(a.init_from), used):
        print(note, file=sys.stderr)
    g = torch.Generator(device=a.device).manual_seed(a.seed)
    ids = [tok.encode_prompt(p, a.system) for p in prompts]
    outs = []
    with stops_on_ctrl_c(lambda: f"{len(outs)} of {len(prompts)} winners printed"):
        for p, cands in zip(prompts, sample_responses(model, tok, ids, a.best_of, a.temperature or 1.0,
                                                      a.top_p, a.max_new_tokens, g, a.top_k)):
            texts = [tok.decode(c) for c in cands]
            try:
                w = best_of(model, tok, t, conversation(a, p), texts, principles=principles,
                            likelihood=likelihood)
            except ValueError as e:          # a judge prompt longer than the model's context, say
                shorter = t.name != "compact" and not isinstance(e, JudgeError)
                sys.exit(f"error: --best_of: {e}" + ("; a shorter --judge_template such as 'compact' "
                                                     "may fit" if shorter else ""))
            under = f", principles {', '.join(n for n, _ in principles)} by win rate" if principles else ""
            print(f"--- {p!r}: best of {a.best_of} (template '{t.name}', likelihood '{likelihood}'{under})")
            print(texts[w], flush=True)
            outs.append(cands[w])
    return outs


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)   # imported: main's own handling from here
    main()
