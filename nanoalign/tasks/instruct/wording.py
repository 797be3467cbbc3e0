"""
The words of the `instruct` task's prompts and the way between a prompt's text and its spec.

A spec is {family, q, fact, instructions: [{kind, t, params}]}: the question family, the index of
its question template, the fact, and each instruction's kind, template index and values. render
writes a spec's text; parse_prompt reads a text back into its spec, refusing a prompt that is not
the task's (NotInTaskError) or an instruction the scorer cannot read (InstructionError);
spec_split says which split a spec's fact and templates belong to.
"""
import functools
import json
import re

from nanoalign.tasks.instruct.tables import (BULLETS, CAPITALS, END_PHRASES, JSON_KEYS, KEYWORDS, LETTER_WORDS,
                                             MAX_WORDS, NAME, SORT_WORDS, UNITS, fact_key, facts)


class InstructionError(ValueError):
    """A prompt whose question is the task's but one of whose instructions the scorer cannot read."""


class NotInTaskError(ValueError):
    """Scoring a response to a prompt that is not in the task."""


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
FIELD_RE = {"a": r"\d+", "b": r"\d+", "q": r"\d+", "n": r"\d+", "country": r"[A-Za-z][A-Za-z .'-]*?",
            "many": r"[a-z]+", "into": r"[a-z]+", "letter": r"[a-z]", "word": r"[a-z]+",
            "words": r"[a-z]+(?:, [a-z]+)+", "k": r"[a-z]+", "p": r"[^']+",
            "keys": r'"[a-z]+"(?: and "[a-z]+")*'}


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
                                    f"one the '{NAME}' task uses (nanoalign/tasks/instruct/tables.py)")
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
