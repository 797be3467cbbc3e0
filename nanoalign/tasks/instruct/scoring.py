"""
The `instruct` task's oracle: every objective a deterministic function of a prompt and a response,
in [0, 1] (the objectives are described in nanoalign/tasks/instruct/__init__.py's docstring).

  follows   instruction_results: each instruction's check (CHECKS, IFEval's with the differences
            stated at each checker)
  correct   is_correct: the response offers the right answer (truth.answer) and no other
  concise   the response's words against the budget of the task's shortest written answer
  explains  a reason (reasons) that names its grounds (has_grounds)
  overall   their weighted mean (WEIGHTS), in oracle_scores

This module and truth.py are the instruct task's part of the mutation run, whole (setup.cfg
[mutmut], docs/mutation.md).
"""
import json
import re
import unicodedata

from nanoalign.tasks.instruct.responses import write_response
from nanoalign.tasks.instruct.tables import ALIASES, CAPITALS, DISTRACTORS, NUMBER_WORDS
from nanoalign.tasks.instruct.truth import answer
from nanoalign.tasks.instruct.wording import parse_prompt

OBJECTIVES = {
    "follows": "the answer follows every format instruction in the prompt",
    "correct": "the answer to the question is right",
    "concise": "the answer uses as few words as possible",
    "explains": "the answer gives the reason why it is right",
}
WEIGHTS = {"follows": 2.0, "correct": 2.0, "concise": 1.0, "explains": 1.0}


def words(text):
    """Words as IFEval counts them (its nltk RegexpTokenizer(r'\\w+')): runs of letters and digits."""
    return re.findall(r"\w+", text)


def _fold(text):
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()


def json_object(response):
    """The response as a JSON object (a ```json fence stripped, as IFEval does), or None."""
    t = response.strip()
    t = re.sub(r"^```(?:json|JSON|Json)?\s*", "", t)
    t = re.sub(r"\s*```$", "", t)
    try:
        obj = json.loads(t)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _bullet_count(response):
    # IFEval counts lines starting with '*' (not '**') and lines starting with '-'
    return sum(bool(re.match(r"\s*(\*[^*]|-)", line)) for line in response.split("\n"))


# The instruction checks (response r, the instruction's params p), IFEval's with the differences stated.
# Functions, not lambdas in CHECKS: the mutation run changes code inside functions only.
def _max_words(r, p):
    return len(words(r)) <= p["n"]               # at most n words (IFEval: 'relation less than n+1')


def _lowercase(r, p):
    return r == r.lower()                        # IFEval's; a response without letters passes


def _keyword(r, p):
    # the keyword as a whole word, any case (IFEval searches a substring)
    return re.search(rf"\b{re.escape(p['k'])}\b", r, re.IGNORECASE) is not None


def _bullets(r, p):
    return _bullet_count(r) == p["n"]            # exactly n bullet lines


def _end_phrase(r, p):
    # IFEval's: the response stripped of white space, then of double quotes, ends with the phrase, any case
    return r.strip().strip('"').lower().endswith(p["p"].lower())


def _json(r, p):
    o = json_object(r)                           # IFEval checks only that it parses
    return o is not None and set(o) == set(p["keys"])


def _no_commas(r, p):
    return "," not in r


CHECKS = {"max_words": _max_words, "lowercase": _lowercase, "keyword": _keyword, "bullets": _bullets,
          "end_phrase": _end_phrase, "json": _json, "no_commas": _no_commas}


def instruction_results(spec, response):
    """[(kind, followed)] for each instruction of the prompt."""
    return [(i["kind"], bool(CHECKS[i["kind"]](response, i["params"]))) for i in spec["instructions"]]


def follows(spec, response):
    """The fraction of the prompt's instructions the response follows (1 for a prompt without any)."""
    res = instruction_results(spec, response)
    return sum(ok for _, ok in res) / len(res) if res else 1.0


TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
_DIGITS = re.compile(r"(?<![\w.])\d{1,3}(?:,\d{3})+(?!\d)|(?<![\w.])\d+(?:\.\d+)?")
_NUMBER_WORD = re.compile(r"\b(?:(" + "|".join(TENS) + r")(?:-(one|two|three|four|five|six|seven|eight|nine))?"
                          r"|(" + "|".join(NUMBER_WORDS) + r"))\b", re.IGNORECASE)


def _numbers(text):
    """(position, value) of every number in the text: digits (1,000 and 1000 alike, 2.5) and number
    words (zero to twenty, once, twice, thrice, the tens and the hyphened tens: sixty, sixty-eight)."""
    out = [(m.start(), float(m.group().replace(",", ""))) for m in _DIGITS.finditer(text)]
    for m in _NUMBER_WORD.finditer(text):
        tens, unit, word = m.groups()
        value = TENS[tens.lower()] + (NUMBER_WORDS[unit.lower()] if unit else 0) if tens \
            else NUMBER_WORDS[word.lower()]
        out.append((m.start(), float(value)))
    return sorted(out)


def _mentions(text, names):
    """(position, name) of every mention of the names (accents folded, any case, whole words)."""
    low, out = _fold(text), []
    for name in names:
        for form in [name] + ALIASES.get(name, []):
            for m in re.finditer(rf"\b{re.escape(_fold(form))}\b", low):
                out.append((m.start(), m.end(), name))
    # a name inside a longer one at the same place ("Mexico" in "Mexico City") is not a mention
    keep, end = [], -1
    for start, stop, name in sorted(out, key=lambda x: (x[0], -x[1])):
        if start >= end:
            keep.append((start, name))
            end = stop
    return keep


CITIES = sorted(set(CAPITALS.values()) | set(DISTRACTORS.values()))


def givens(spec):
    """The numbers of a number question that a response may mention besides its answer: the
    question's own (the operands; the quantity) and, for `units`, the conversion's (1 and the
    factor: "one meter is 100 centimeters"). None of them is ever the answer (a + b and a * b exceed
    both operands; q * factor exceeds q, the factor and 1, as q >= 2 and the factor >= 3)."""
    f = spec["fact"]
    own = {f[k] for k in ("a", "b", "q") if k in f}
    if spec["family"] == "units":
        own |= {1, f["factor"]}
    return {float(v) for v in own}


def offered_answers(spec, response):
    """Every answer the response offers, in order (see is_correct): numbers other than the givens,
    cities, or listings (runs of as many mentions of the listed words as there are words)."""
    fam = spec["family"]
    if fam == "capital":
        return [c for _, c in _mentions(response, CITIES)]
    if fam == "sort":
        seq = [w for _, w in _mentions(response, spec["fact"]["words"])]
        n = len(spec["fact"]["words"])
        return [seq[i:i + n] for i in range(0, len(seq), n)]
    own = givens(spec)
    return [v for _, v in _numbers(response) if v not in own]


def is_correct(spec, response):
    """The response commits to the right answer and offers no other: it offers at least one answer,
    and every answer it offers is the right one. What counts as an offered answer, per family:

      sum, product, units, letters: every number the response mentions (digits, or the number words
          of _numbers), except the givens (the question's own numbers and, for units, 1 and the
          conversion factor: see `givens`; none of them can be the answer, so none competes with it)
      capital: every mention of a city of the task's tables, a capital or a big city a model
          confuses with one (accents folded, any case, whole words, the aliases Kiev, Bogotá, ...)
      sort: the mentions of the listed words (whole words, any case), read in order and cut into
          listings of as many words as were listed: every listing must be the alphabetical order,
          so the words may appear only as whole sorted listings (a listing cut short is an answer too)

    A mention counts whatever the words around it say: "not 127", "127 is wrong", a restatement
    of the prompt's word order, a step of working ("20 + 40 = 60") or a number in a list marker
    ("1.") all offer an answer. So "127? No wait, it is 137.", "It is 128 or maybe 126, roughly
    127." and a response listing every ordering score 0 whichever is right, and so does a right
    answer that names a rejected one ("Canberra, not Sydney"): the price of a rule that a hedge cannot
    fool. Inserting a wrong answer anywhere between the words of a response never raises the score."""
    right, offered = answer(spec), offered_answers(spec, response)
    return bool(offered) and all(a == right for a in offered)     # a float number equals the int answer


# a reason: a causal connective, or how the answer is found ("to calculate 4 times 2, multiply ...")
CONNECTIVE = re.compile(r"\b(because|since|so|therefore|thus|hence|as a result|which means|this means|"
                        r"that is why|that's why|given that|due to|"
                        r"to (calculate|compute|find|get|convert|count|sort|determine)|"
                        r"(by|after) (adding|multiplying|counting|converting|sorting|comparing))\b",
                        re.IGNORECASE)


def reasons(response):
    """The parts of a response that give a reason: each sentence (up to . ! ? or a line break) with a
    connective in it, and the "reason" of a JSON answer if it has two words or more."""
    out = [s for s in re.split(r"(?<=[.!?])\s+|\n", response) if CONNECTIVE.search(s)]
    obj = json_object(response)
    reason = obj.get("reason") if obj else None
    if isinstance(reason, str) and len(words(reason)) >= 2:
        out.append(reason)
    return out


def has_grounds(spec, text):
    """The text names the grounds of the answer: both operands (sum, product), the country (capital,
    without a leading "the"), the conversion factor (units), the word, whole or spelled out with
    separators (letters: "s-t-r-a-w...", "s t r a w ..."), or the alphabet or the order of letters
    (sort: "alphabet", "comes before", "comes after", "starts with", "first letter")."""
    f, fam, low = spec["fact"], spec["family"], _fold(text)
    if fam in ("sum", "product"):
        vals = {v for _, v in _numbers(text)}
        return float(f["a"]) in vals and float(f["b"]) in vals
    if fam == "capital":
        bare = f["country"][4:] if f["country"].startswith("the ") else f["country"]
        return re.search(rf"\b{re.escape(bare.lower())}\b", low) is not None
    if fam == "units":
        return float(f["factor"]) in {v for _, v in _numbers(text)}
    if fam == "letters":
        w = f["word"]
        return re.search(rf"\b{re.escape(w)}\b", low) is not None or \
            re.search(r"[\s\-,.']+".join(re.escape(c) for c in w), low) is not None
    return re.search(r"alphabet|comes? (before|after)|starts? with|first letter", low) is not None


def explains(spec, response):
    """1 if a reason of the response (see `reasons`) names the grounds of the answer (`has_grounds`),
    0.5 if it gives reasons none of which names them, 0 if it gives none."""
    rs = reasons(response)
    if not rs:
        return 0.0
    return 1.0 if any(has_grounds(spec, r) for r in rs) else 0.5


def budget(spec):
    """The word budget of `concise`: the shortest correct, compliant answer the task writes, + 4."""
    return len(words(write_response(spec, "short"))) + 4


def concise(spec, response):
    """1 up to the budget of words, then budget / words (twice the budget scores 1/2)."""
    b, n = budget(spec), len(words(response))
    return 1.0 if n <= b else b / n


def _scores(spec, response):
    s = {"follows": follows(spec, response),
         "correct": float(is_correct(spec, response)),
         "concise": concise(spec, response),
         "explains": explains(spec, response)}
    s["overall"] = sum(WEIGHTS[k] * s[k] for k in OBJECTIVES) / sum(WEIGHTS.values())
    return s


def oracle_scores(prompt, response):
    """{objective: score in [0, 1]} for one response, plus 'overall' (their weighted mean). A prompt
    not in the task is a NotInTaskError, an unreadable instruction an InstructionError (ValueErrors)."""
    from model.tokenizer import answer_text
    return _scores(parse_prompt(prompt), answer_text(response))
