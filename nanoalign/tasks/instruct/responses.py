"""
The answers the `instruct` task writes itself: for a spec, a short / plain / explained answer that
follows every instruction (or all but some), with the right answer or a plausible wrong one. They
are the SFT rows (generate.py), the word budget of `concise` (scoring.py), and the proof that a
generated prompt can be answered correctly within its instructions (generate.make_spec).
"""
import json

from nanoalign.tasks.instruct.tables import CAPITALS, DISTRACTORS
from nanoalign.tasks.instruct.truth import answer


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
