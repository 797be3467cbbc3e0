"""
The oracle's rationale: a short, true justification of a response's scores, in the words of the
scorers (principle-aware JSFT's rationale templates read it through the task).
"""
from nanoalign.tasks.instruct.responses import _noun
from nanoalign.tasks.instruct.scoring import budget, explains, instruction_results, is_correct, words
from nanoalign.tasks.instruct.wording import parse_prompt


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
