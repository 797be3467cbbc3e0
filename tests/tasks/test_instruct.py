"""The `instruct` task (nanoalign/tasks/instruct/) and its on-policy data build
(nanoalign/tasks/instruct/samples.py): every scorer on written responses and on any text, the fact and
wording splits, the prompts, and the build."""
import json
import os
import random
import statistics
from itertools import permutations

import pytest
from hypothesis import given, strategies as st

from nanoalign.tasks import instruct as I
from nanoalign.tasks.instruct import responses, samples as D, scoring
from tests.helpers import byte_tokenizer, one_thread, tiny


def score(prompt, response):
    return I.oracle_scores(prompt, response)


# -- each instruction's checker -------------------------------------------------------------------------
Q = "What is the capital of France?"


@pytest.mark.parametrize("instruction, good, bad", [
    ("Answer in at most 5 words.", "It is Paris.", "The capital of France is Paris, of course."),
    ("Use only lowercase letters.", "the capital is paris.", "The capital is Paris."),
    ("Include the word 'indeed' in your answer.", "Indeed, Paris.", "Paris, undeniably."),   # whole word
    ("Answer with exactly 2 bullet points, each starting with '* '.", "* Paris\n- in France",
     "* Paris\n* France\n* Europe"),
    ("End your answer with the exact phrase 'Hope this helps.'", "Paris. hope this helps.",
     "Hope this helps. Paris."),
    ('Answer in JSON with the keys "answer" and "reason".',
     '```json\n{"answer": "Paris", "reason": "It is the seat of government."}\n```',
     '{"answer": "Paris"}'),
    ("Do not use any commas.", "Paris is the capital.", "Paris, the capital."),
])
def test_each_instruction_on_written_responses(instruction, good, bad):
    p = f"{Q} {instruction}"
    assert score(p, good)["follows"] == 1.0
    assert score(p, bad)["follows"] == 0.0


def test_follows_is_the_fraction_of_instructions_followed():
    p = f"{Q} Use only lowercase letters. Do not use any commas."
    assert score(p, "paris.")["follows"] == 1.0
    assert score(p, "Paris.")["follows"] == 0.5
    assert score(p, "Paris, France.")["follows"] == 0.0
    assert score(Q, "Paris, France.")["follows"] == 1.0       # a prompt without instructions


def test_json_rejects_extra_keys_and_non_objects():
    p = f'{Q} Answer in JSON with the keys "answer".'
    assert score(p, '{"answer": "Paris"}')["follows"] == 1.0
    for bad in ('{"answer": "Paris", "city": "Paris"}', '["Paris"]', "answer: Paris", '{"answer": "Paris"'):
        assert score(p, bad)["follows"] == 0.0, bad


def test_json_fences_are_stripped_as_ifeval_does():
    p = f'{Q} Answer in JSON with the keys "answer".'
    for fence in ("```", "```json", "```JSON", "```Json"):
        assert score(p, f'{fence}\n{{"answer": "Paris"}}\n```')["follows"] == 1.0, fence
    assert score(p, '```python\n{"answer": "Paris"}\n```')["follows"] == 0.0


@pytest.mark.parametrize("response, ok", [
    ("Paris. Hope this helps.", True), ('"Paris. Hope this helps."', True), ('Paris. Hope this helps." \n', True),
    ("Paris. HOPE THIS HELPS.", True), ("Paris. Hope this helps.X", False), ("Paris. Hope this helps!", False)])
def test_end_phrase_after_white_space_and_quotes(response, ok):
    assert I.CHECKS["end_phrase"](response, {"p": "Hope this helps."}) == ok


@pytest.mark.parametrize("n", I.MAX_WORDS)
def test_max_words_at_the_limit(n):
    assert I.CHECKS["max_words"](" ".join(["word"] * n), {"n": n})
    assert not I.CHECKS["max_words"](" ".join(["word"] * (n + 1)), {"n": n})


@given(st.lists(st.from_regex(r"[A-Za-z0-9]{1,8}", fullmatch=True), max_size=30), st.sampled_from(I.MAX_WORDS))
def test_max_words_counts_words(ws, n):
    assert I.CHECKS["max_words"](" ".join(ws), {"n": n}) == (len(ws) <= n)


@given(st.from_regex(r"[ -~\n]{0,60}", fullmatch=True))
def test_lowercase_end_phrase_no_commas_on_any_text(t):
    assert I.CHECKS["lowercase"](t.lower(), {})
    assert I.CHECKS["lowercase"](t, {}) == (not any("A" <= c <= "Z" for c in t))
    for ph in I.END_PHRASES:
        assert I.CHECKS["end_phrase"](f"{t} {ph}", {"p": ph})
    assert I.CHECKS["no_commas"](t.replace(",", ""), {}) and not I.CHECKS["no_commas"](t + ",", {})


@given(st.lists(st.from_regex(r"[a-z ]{1,12}", fullmatch=True).filter(str.strip), min_size=1, max_size=5),
       st.sampled_from(I.KEYWORDS))
def test_bullets_and_keyword_on_any_items(items, k):
    text = "\n".join("* " + it for it in items)
    assert I.CHECKS["bullets"](text, {"n": len(items)})
    assert not I.CHECKS["bullets"](text, {"n": len(items) + 1})
    assert I.CHECKS["keyword"](f"{text} {k.upper()}", {"k": k})


@given(st.sampled_from(I.JSON_KEYS), st.lists(st.text(max_size=20), min_size=2, max_size=2))
def test_json_with_exactly_the_keys(keys, values):
    obj = dict(zip(keys, values))
    assert I.CHECKS["json"](json.dumps(obj), {"keys": keys})
    assert not I.CHECKS["json"](json.dumps({**obj, "extra": 1}), {"keys": keys})


# -- the objectives ------------------------------------------------------------------------------------
@pytest.mark.parametrize("prompt, right, wrong", [
    ("What is 23 + 45? Do not use any commas.", ["68", "23 + 45 = 68.", "sixty-eight", "sixty-eight? No: 68",
                                                 '{"answer": 68}', "68.0", "68 because 23 plus 45 makes 68"],
     ["69", "23 + 45 = 67.", "", "I cannot add.", "20 + 40 = 60 and 3 + 5 = 8 so 68", "eight", "68.5",
      "sixty eight"]),
    ("What is 25 + 35? Do not use any commas.", ["sixty", "60", "Sixty."], ["sixty-one", "61"]),
    ("What is 7 times 8? Do not use any commas.", ["56", "7 times 8 is 56 because 7 groups of 8 make 56."],
     ["54", "7 times 8 is 48.", "7 times 8 is 56 or 7 times 9 is 63."]),
    ("What is the capital of Australia? Do not use any commas.", ["Canberra.", "canberra", "CANBERRA is the capital"],
     ["Sydney.", "Sydney, then Melbourne, then Canberra? Sydney.", "Australia.", "Not Sydney: Canberra"]),
    ("What is the capital of Ukraine? Do not use any commas.", ["Kyiv", "Kiev", "Kyiv (also spelled Kiev)"],
     ["Moscow", "Kyiv or Moscow"]),
    ("What is the capital of Mexico? Do not use any commas.", ["Mexico City", "The capital of Mexico is Mexico City."],
     ["Mexico", "Mexico City or Rome"]),
    ("How many centimeters are in 3 meters? Do not use any commas.",
     ["300", "3 meters is 300 centimeters.", "One meter is 100 centimeters so 3 meters is 300.",
      "3 x 100 = 300", "1 meter = 100 cm: 300 cm"],
     ["30", "3 meters is 3000 centimeters.", "100", "3"]),
    ("How many grams are in 12 kilograms? Do not use any commas.", ["12,000 grams", "12000"], ["1200", "12"]),
    ("How many times does the letter 'r' appear in the word 'strawberry'? Do not use any commas.",
     ["3", "three times", "The letter r appears 3 times.", "thrice"], ["2", "twice", "3 or 4"]),
    ("How many times does the letter 'p' appear in the word 'alphabet'? Do not use any commas.",
     ["once", "1", "one time"], ["two", "0"]),
    ("Sort these words alphabetically: tiger, apple, kettle. Do not use any commas.",
     ["apple, kettle, tiger", "* apple\n* kettle\n* tiger", "Apple Kettle Tiger. Again: apple kettle tiger",
      '{"answer": "apple kettle tiger"}'],
     ["apple, tiger, kettle", "tiger, apple, kettle", "apple kettle", "apple kettle tiger apple",
      # the prompt's own order restated counts as an ordering offered
      "tiger apple kettle sorted: apple kettle tiger"]),
])
def test_correct_on_written_responses(prompt, right, wrong):
    for r in right:
        assert score(prompt, r)["correct"] == 1.0, r
    for r in wrong:
        assert score(prompt, r)["correct"] == 0.0, r


ALL_ORDERS = "\n".join(", ".join(p) for p in permutations(["eagle", "honey", "jacket", "pencil"]))


@pytest.mark.parametrize("prompt, hedge", [
    # issue #30's: the right answer at one end, another answer at the other
    ("What is 60 + 67?", "127? No wait, it is 137."),
    ("What is 60 + 77?", "127? No wait, it is 137."),
    ("What is 60 + 67?", "It is 128 or maybe 126, roughly 127."),
    ("Sort these words alphabetically: jacket, pencil, eagle, honey.", ALL_ORDERS),
    ("Sort these words alphabetically: jacket, pencil, eagle, honey.",
     "eagle, honey, jacket, pencil is wrong. The correct order is pencil, jacket, honey, eagle."),
    # the prompt's order is the reverse here: the reversed listing is not excused as a restatement
    ("Sort these words alphabetically: pencil, jacket, honey, eagle.",
     "eagle, honey, jacket, pencil is wrong. The correct order is pencil, jacket, honey, eagle."),
    # others: an answer and its neighbours, a list of guesses, a range, an alternative in another field
    ("What is 60 + 67?", "127, give or take one: 126 to 128."),
    ("What is 60 + 67?", "* 127\n* 126"),
    ("What is 60 + 67?", '{"answer": 127, "or": 128}'),
    ("What is 60 + 67?", "Between 120 and 130; I say 127."),
    ("What is 60 + 67?", "127 (or one hundred and twenty-eight)"),
    ("What is 7 times 8?", "56, unless you meant 7 times 9, which is 63."),
    ("What is the capital of Australia?", "Canberra or Sydney."),
    ("What is the capital of Australia?", "Sydney? Canberra? Melbourne? I would say Canberra."),
    ("What is the capital of Australia?", '{"answer": "Canberra", "reason": "not Sydney, as many think"}'),
    ("How many centimeters are in 3 meters?", "300 (or 3000) centimeters."),
    ("How many times does the letter 'r' appear in the word 'strawberry'?", "2 or 3 times, most likely 3."),
    ("How many times does the letter 'r' appear in the word 'strawberry'?", "three, maybe four"),
    ("Sort these words alphabetically: tiger, apple, kettle.", "apple, kettle, tiger or apple, tiger, kettle"),
    ("Sort these words alphabetically: tiger, apple, kettle.", "apple kettle tiger\n(kettle apple tiger)"),
])
def test_a_hedge_scores_0(prompt, hedge):
    assert score(prompt, hedge)["correct"] == 0.0


def test_a_name_inside_a_longer_one_is_not_a_mention():
    names = ["Mexico", "Mexico City", "Rome"]
    assert scoring._mentions("Mexico City, not Rome; Mexico.", names) == \
        [(0, "Mexico City"), (17, "Rome"), (23, "Mexico")]
    assert scoring._mentions("Bogotá or bogota or Kiev", ["Bogota", "Kyiv"]) == \
        [(0, "Bogota"), (10, "Bogota"), (20, "Kyiv")]


def test_the_givens_are_never_the_answer():
    """What is_correct leaves out of the offered answers (the question's numbers; for units also 1
    and the factor) can never be the right answer, so leaving them out cannot excuse a hedge."""
    for fam in ("sum", "product", "units", "letters"):
        for key in I.facts(fam):
            specs = [{"family": fam, "fact": f} for f in
                     ([{"a": key[0], "b": key[1]}] if fam in ("sum", "product") else
                      [dict(one=u[0], many=u[1], into=u[2], factor=u[3], q=q) for u in I.UNITS if u[0] == key
                       for q in range(2, 13)] if fam == "units" else
                      [{"word": key, "letter": c} for c in set(key)])]
            for spec in specs:
                assert float(I.answer(spec)) not in I.givens(spec), spec
    spec = I.parse_prompt("How many centimeters are in 3 meters?")
    assert I.givens(spec) == {3.0, 100.0, 1.0}
    assert I.givens(I.parse_prompt("What is 7 times 8?")) == {7.0, 8.0}
    assert I.givens(I.parse_prompt("How many times does the letter 'r' appear in the word 'strawberry'?")) == set()


HEDGE_PROMPTS = I.prompts(60, 7, "train") + I.prompts(30, 7, "test")
SPELLED = {v: w for w, v in I.NUMBER_WORDS.items()} | {
    t + u: f"{tw}-{w}" if u else tw for tw, t in I.TENS.items() for w, u in I.NUMBER_WORDS.items() if u < 10}


def _wrong_answers(spec):
    """A strategy of wrong answers to a prompt (never a given), written as a response might write them."""
    right, fam = I.answer(spec), spec["family"]
    if fam == "capital":
        return st.sampled_from([c for c in I.CITIES if c != right])
    if fam == "sort":
        return st.permutations(right).filter(lambda p: p != right).flatmap(
            lambda p: st.sampled_from([", ".join(p), " ".join(p), "\n".join("* " + w for w in p)]))
    return st.integers(0, 20_000).filter(lambda v: v != right and v not in I.givens(spec)).flatmap(
        lambda v: st.sampled_from([str(v), f"{v:,}", f"{v}.0"] + ([SPELLED[v]] if v in SPELLED else [])))


def _responses(spec):
    """The task's written answers, right or wrong, in each style, and short texts of the words,
    numbers and cities a response to this prompt may hold."""
    right = I.answer(spec)
    tokens = ["the", "is", "or", "not", ",", ".", "-", "\n", "*", "1", "one", "12", "Sydney", "Canberra"] + \
        (list(right) if isinstance(right, list) else [str(right)]) + [str(int(g)) for g in I.givens(spec)]
    return st.one_of(
        st.sampled_from(I.STYLES).map(lambda style: I.write_response(spec, style)),
        st.sampled_from(I.STYLES).map(
            lambda style: I.write_response(spec, style, responses._wrong(spec, random.Random(0)))),
        st.lists(st.sampled_from(tokens), max_size=10).map(" ".join))


@given(st.data())
def test_inserting_a_wrong_answer_never_raises_correct(data):
    """Any response, a wrong answer put between any two of its words, bare or in a hedging or
    rejecting frame: `correct` never goes up; for a number or a city it is 0."""
    prompt = data.draw(st.sampled_from(HEDGE_PROMPTS))
    spec = I.parse_prompt(prompt)
    response = data.draw(_responses(spec))
    wrong = data.draw(_wrong_answers(spec))
    frame = data.draw(st.sampled_from(["{}", "or {}", "maybe {}?", "not {}", "({})", "{} is wrong.", "* {}\n"]))
    # at either end or beside white space: never inside a word or a number
    cuts = [i for i in range(len(response) + 1)
            if i in (0, len(response)) or response[i - 1].isspace() or response[i].isspace()]
    i = data.draw(st.sampled_from(cuts))
    hedged = response[:i] + " " + frame.format(wrong) + " " + response[i:]
    after = score(prompt, hedged)["correct"]
    assert after <= score(prompt, response)["correct"], hedged
    # (for `sort`, a wrong order can join the words around it into right listings: "apple
    # [kettle tiger apple] kettle tiger" reads as the right order twice)
    assert after == 0.0 or spec["family"] == "sort", hedged


def test_right_answers_in_every_style_score_1():
    """The task's own answers, right, in each style and family, with every kind of instruction."""
    seen = set()
    for split in I.SPLITS:
        for p in I.prompts(300, 2, split):
            spec = I.parse_prompt(p)
            for style in I.STYLES:
                assert score(p, I.write_response(spec, style))["correct"] == 1.0, (p, style)
                seen.add((spec["family"], style))
    assert seen == {(f, s) for f in I.FAMILIES for s in I.STYLES}


def test_explains_needs_a_reason_and_its_grounds():
    p = "How many centimeters are in 3 meters? Do not use any commas."
    assert score(p, "300 centimeters because one meter is 100 centimeters.")["explains"] == 1.0
    assert score(p, "300 because I know it.")["explains"] == 0.5       # a reason, no grounds
    assert score(p, "3 meters is 300 centimeters; 100 each.")["explains"] == 0.0   # grounds, no reason
    assert score(p, "To convert meters to centimeters multiply by 100: 300.")["explains"] == 1.0   # how
    pj = 'What is the capital of France? Answer in JSON with the keys "answer" and "reason".'
    assert score(pj, '{"answer": "Paris", "reason": "The government of France sits there."}')["explains"] == 1.0
    assert score(pj, '{"answer": "Paris", "reason": ""}')["explains"] == 0.0
    ps = "Sort these words alphabetically: tiger, apple, kettle. Do not use any commas."
    assert score(ps, "apple kettle tiger since a comes before k")["explains"] == 1.0
    pl = "How many times does the letter 'r' appear in the word 'strawberry'? Do not use any commas."
    assert score(pl, "3 because s-t-r-a-w-b-e-r-r-y has three.")["explains"] == 1.0
    # the grounds must be in a reason: the sentence of the connective, or the JSON "reason"
    assert score(p, "3 meters is 300 centimeters; 100 each. I know because I checked.")["explains"] == 0.5
    assert score(p, "One meter is 100 centimeters.\nSo 300.")["explains"] == 0.5
    assert score(p, "One meter is 100 centimeters, so 300.")["explains"] == 1.0
    assert score(pj, '{"answer": "France: Paris", "reason": "Seat of government."}')["explains"] == 0.5
    assert score(pj, '{"answer": "Paris", "reason": "France"}')["explains"] == 0.0     # one word: no reason
    assert score(pj, '{"answer": "Paris", "reason": "France decided."}')["explains"] == 1.0   # two words
    assert score(pj, '{"answer": "France: Paris", "reason": "It decided."}')["explains"] == 0.5
    assert score(pj, '{"answer": "Paris because of France", "reason": ""}')["explains"] == 1.0
    pp = "What is 7 times 8? Do not use any commas."
    assert score(pp, "56 because 7 groups of 8 make 56")["explains"] == 1.0
    assert score(pp, "56 because 7 groups of eight make 56")["explains"] == 1.0
    assert score(pp, "56 because 7 groups make 56")["explains"] == 0.5              # one operand only
    assert score(ps, "apple kettle tiger since their first letters are a k t")["explains"] == 1.0
    assert score(ps, "apple kettle tiger since I sorted them")["explains"] == 0.5
    pw = "How many times does the letter 'p' appear in the word 'alphabet'? Do not use any commas."
    assert score(pw, "once because a l p h a b e t has one p")["explains"] == 1.0
    assert score(pw, "once because alphabet has one p")["explains"] == 1.0
    assert score(pw, "once because alpha has one p")["explains"] == 0.5
    pc = "What is the capital of the Netherlands? Do not use any commas."
    assert score(pc, "Amsterdam because Netherlands law says so")["explains"] == 1.0
    assert score(pc, "Amsterdam because the law says so")["explains"] == 0.5


def test_concise_against_the_budget():
    p = "What is 23 + 45? Do not use any commas."
    b = I.budget(I.parse_prompt(p))
    assert b == 5                                     # "68." is 1 word, + 4
    assert score(p, "68")["concise"] == 1.0
    assert score(p, " ".join(["68"] * b))["concise"] == 1.0
    assert score(p, " ".join(["68"] * (2 * b)))["concise"] == 0.5
    assert score(p, " ".join(["68"] * (4 * b)))["concise"] == 0.25


@given(st.sampled_from(I.prompts(40, 0, "train") + I.prompts(10, 0, "test")), st.text(max_size=200))
def test_scores_are_in_0_1_for_any_text(p, r):
    s = score(p, r)
    assert set(s) == set(I.OBJECTIVES) | {"overall"}
    assert all(0.0 <= v <= 1.0 for v in s.values())


def test_written_answers_are_right_and_compliant():
    rows = I.sft_rows(300, 0, "train")
    for r in rows:
        s = score(r["prompt"], r["response"])
        assert s["correct"] == 1.0 and s["follows"] == 1.0, (r, s)
    weak = I.sft_rows(300, 0, "train", p_correct=0.0)
    assert sum(score(r["prompt"], r["response"])["correct"] for r in weak) == 0


def test_rationale_is_true():
    p = "What is 23 + 45? Use only lowercase letters."
    assert I.rationale(p, "68", "correct") == "right answer"
    assert I.rationale(p, "Sixty-nine", "follows") == "follows 0 of 1 instructions (breaks lowercase)"
    assert I.rationale(p, "68 because 23 + 45 = 68", "explains") == "gives a reason with its grounds"
    assert I.rationale(p, "68") == "follows 1 of 1 instructions, right answer, 1 word, budget 5, gives no reason"


# -- the conflict --------------------------------------------------------------------------------------
def _grounds(spec):
    f = spec["fact"]
    return {"sum": lambda: f"{f['a']} and {f['b']} add up to it",
            "product": lambda: f"{f['a']} rows of {f['b']} give it",
            "capital": lambda: f"the government of {f['country']} sits there",
            "units": lambda: f"each {f['one']} holds {f['factor']} {f['into']}",
            "letters": lambda: f"{f['word']} contains it that often",
            "sort": lambda: "that is the order of their first letters in the alphabet"}[spec["family"]]()


def test_explains_conflicts_with_concise():
    """On a fixed set of responses in five styles, written here (no model), the two objectives are
    negatively correlated: a reason costs words."""
    concise, explains = [], []
    for p in I.prompts(40, 5, "train"):
        spec = I.parse_prompt(p)
        a = I.answer(spec)
        a = " ".join(a) if isinstance(a, list) else str(a)
        styles = [a,
                  f"The answer is {a}.",
                  f"{a} because {_grounds(spec)}.",
                  f"Let me think about this carefully. {_grounds(spec).capitalize()}, so the answer is {a}.",
                  f"Thank you for this lovely question, I am very happy to help you with it today: {a}."]
        for r in styles:
            s = score(p, r)
            concise.append(s["concise"])
            explains.append(s["explains"])
    # -0.32 on this set; without the padded style (long and no reason) -0.72
    assert statistics.correlation(concise, explains) < -0.25
    by_style = [statistics.mean(concise[i::5]) for i in range(5)]
    assert by_style[0] == by_style[1] == 1.0 and by_style[3] < by_style[2] < 0.9
    assert [statistics.mean(explains[i::5]) for i in range(5)] == [0, 0, 1, 1, 0]


# -- splits --------------------------------------------------------------------------------------------
def test_splits_are_disjoint_by_fact_and_by_wording():
    seen = {}
    for split in I.SPLITS:
        specs = [I.parse_prompt(p) for p in I.prompts(600, 1, split)]
        assert {s["family"] for s in specs} == set(I.FAMILIES)
        facts = {(s["family"], I.fact_key(s)) for s in specs}
        questions = {(s["family"], I.QUESTIONS[s["family"]][s["q"]]) for s in specs}
        instructions = {I.INSTRUCTION_TEMPLATES[i["kind"]][i["t"]] for s in specs for i in s["instructions"]}
        assert {i["kind"] for s in specs for i in s["instructions"]} == set(I.INSTRUCTION_TEMPLATES)
        seen[split] = (facts, questions, instructions)
    assert len(I.test_prompts(200)) == 200 and {I.spec_split(I.parse_prompt(p))[0] for p in I.test_prompts(50)} == {"test"}
    for a, b in [("train", "val"), ("train", "test"), ("val", "test")]:
        for x, y in zip(seen[a], seen[b]):
            assert not x & y, (a, b, sorted(x & y)[:3])


def test_prompts_round_trip_and_are_deterministic():
    for split in I.SPLITS:
        ps = I.prompts(200, 3, split)
        assert ps == I.prompts(200, 3, split) and ps != I.prompts(200, 4, split)
        for p in ps:
            assert I.render(I.parse_prompt(p)) == p


# -- the clear errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("prompt", ["Tell me a joke.", "What is the capital of Atlantis?", "What is 17 + 8?",
                                    [{"role": "system", "content": "Be brief."}]])
def test_scoring_a_prompt_not_in_the_task_is_an_error(prompt):
    with pytest.raises(I.NotInTaskError, match="not a prompt of the 'instruct' task"):
        score(prompt, "Paris")
    assert issubclass(I.NotInTaskError, ValueError)   # what nanoalign.onpolicy.agreement skips


@pytest.mark.parametrize("prompt, match", [
    (f"{Q} Answer like a pirate.", "cannot parse the instruction 'Answer like a pirate.'"),
    (f"{Q} Use only lowercase letters. Rhyme, please.", "cannot parse the instruction 'Rhyme, please.'"),
    (f"{Q} Answer in at most 7 words.", "its value is not one the 'instruct' task uses"),
    (f"{Q} Include the word 'banana' in your answer.", "its value is not one"),
])
def test_an_instruction_the_scorer_cannot_parse_is_an_error(prompt, match):
    with pytest.raises(I.InstructionError, match=match):
        score(prompt, "Paris")
    assert score([{"role": "user", "content": f"{Q} Use only lowercase letters."}], "paris")["follows"] == 1


def test_a_tokenizer_without_a_chat_template_is_an_error(tmp_path):
    """The task's prompts are chat turns: a tokenizer that cannot render one is refused before any
    sampling, with the error every other tool gives (model/tokenizer.py NoChatTemplate)."""
    from model.tokenizer import NoChatTemplate, Tokenizer
    bt = byte_tokenizer()
    bare = Tokenizer(bt.tok, bos_id=bt.bos_id, eos_id=bt.eos_id, pad_id=bt.pad_id)
    with pytest.raises(NoChatTemplate, match="no chat template"):
        I.build(str(tmp_path / "d"), k=2, n_prompts=2, model=tiny(vocab_size=bt.vocab_size), tok=bare,
                init_from="tiny")
    assert not os.path.exists(tmp_path / "d" / D.SIDECAR)     # the directory is not claimed


def test_preference_rows_need_a_source_of_samples():
    from nanoalign.data import DataError
    with pytest.raises(DataError, match="built on-policy.*--task_data DIR"):
        I.preference_rows(4, 0, "train")
    opts = I.Options(n_train=3)
    assert [set(r) for r in I.rows("prompt", "train", 0, opts)] == [{"prompt"}] * 3


# -- preference rows from scored samples ----------------------------------------------------------------
def test_preference_rows_from_samples():
    p = "What is 23 + 45? Use only lowercase letters."
    recs = [{"split": "train", "prompt": p, "responses": ["68", "68 because 23 plus 45 is 68", "69", "68", " "]},
            {"split": "val", "prompt": p, "responses": ["68", "Sixty"]}]
    rows = I.preference_rows(100, 0, "train", samples=recs)
    assert len(rows) == 3          # 3 distinct non-empty answers: 3 pairs, none tied
    for r in rows:
        assert r["scores"][0]["overall"] > r["scores"][1]["overall"]
        assert set(r["labels"]) == set(I.OBJECTIVES) and set(r["labels"].values()) <= {"1", "2", "equal"}
        assert r["objectives"] == I.OBJECTIVES
    by = {(r["chosen"], r["rejected"]): r["labels"] for r in rows}
    assert by[("68 because 23 plus 45 is 68", "68")] == {"follows": "equal", "correct": "equal",
                                                    "concise": "2", "explains": "1"}
    assert ("68", "69") in by
    assert I.preference_rows(100, 0, "train", samples=recs) == rows
    assert len(I.preference_rows(2, 0, "train", samples=recs)) == 2
    assert len(I.preference_rows(100, 0, "val", samples=recs)) == 1


# -- the on-policy build ---------------------------------------------------------------------------------
def _model_and_tok():
    tok = byte_tokenizer()
    return tiny(seed=1, vocab_size=tok.vocab_size, max_seq_len=384), tok


def _build(out, seed, model, tok, **kw):
    return I.build(str(out), k=3, n_prompts=6, n_val=2, seed=seed, model=model, tok=tok, init_from="tiny-test",
                   max_new_tokens=6, batch_size=4, log=lambda *a: None, **kw)


def _files(d):
    return {f: open(os.path.join(d, f)).read() for f in sorted(os.listdir(d)) if f.endswith(".jsonl")}


def test_build_is_deterministic_and_cached(tmp_path, monkeypatch):
    model, tok = _model_and_tok()
    with one_thread():
        a = _build(tmp_path / "a", 7, model, tok, command="test a")
        _build(tmp_path / "b", 7, model, tok, command="test b")
        _build(tmp_path / "c", 8, model, tok)
    assert not a["reused"] and a["counts"]["train"]["samples"] == 18 and a["counts"]["val"]["prompts"] == 2
    fa = _files(tmp_path / "a")
    assert set(fa) == {"samples.jsonl", "pref.train.jsonl", "pref.val.jsonl"}
    assert fa == _files(tmp_path / "b") and fa != _files(tmp_path / "c")
    recs = D.load_samples(str(tmp_path / "a"), "train")
    assert [r["prompt"] for r in recs] == I.prompts(6, 7, "train")
    assert all(len(r["responses"]) == 3 and r["scores"][0] == I.oracle_scores(r["prompt"], r["responses"][0])
               for r in recs)
    side = json.load(open(tmp_path / "a" / D.SIDECAR))
    assert side["command"] == "test a" and side["seed"] == 7 and side["finished"]
    # preference rows read from the directory are the rows written beside the samples
    written = [json.loads(x) for x in fa["pref.train.jsonl"].splitlines()]
    rows = I.preference_rows(10 ** 6, 0, "train", samples=str(tmp_path / "a"))
    assert sorted(map(json.dumps, rows)) == sorted(map(json.dumps, written))
    assert I.rows("pref", "train", 0, I.Options(n_train=10 ** 6, task_data=str(tmp_path / "a"))) == rows

    # a second call samples nothing and returns the first build's sidecar
    def no_sampling(*a, **k):
        raise AssertionError("sampled again")
    monkeypatch.setattr(D, "sample_split", no_sampling)
    again = _build(tmp_path / "a", 7, None, None)
    assert again["reused"] and again["command"] == "test a" and _files(tmp_path / "a") == fa
    with pytest.raises(D.BuildError, match=r"another build \(seed 7 \(asked 8\)\)"):
        _build(tmp_path / "a", 8, None, None)


def test_an_interrupted_build_continues_to_the_same_files(tmp_path, monkeypatch):
    model, tok = _model_and_tok()
    with one_thread():
        whole = _build(tmp_path / "whole", 3, model, tok)
        real, calls = D.sample_split, []

        def stop_after_train(model, tok, split, *a):
            calls.append(split)
            if split == "val":
                raise KeyboardInterrupt
            return real(model, tok, split, *a)
        monkeypatch.setattr(D, "sample_split", stop_after_train)
        with pytest.raises(KeyboardInterrupt):
            _build(tmp_path / "cut", 3, model, tok)
        monkeypatch.setattr(D, "sample_split", real)
        assert os.path.exists(tmp_path / "cut" / D.PARTIAL)
        _build(tmp_path / "cut", 3, model, tok)
    assert whole["counts"]["train"]["prompts"] == 6
    assert _files(tmp_path / "cut") == _files(tmp_path / "whole")


def test_build_after_the_examples_flags_is_refused_not_run_as_examples(capsys):
    """`--n 2 build --init_from ...`: the top parser took 'build' as its command, then printed
    examples: the build's flags after it were an error about them, or, with none, examples ran."""
    with pytest.raises(SystemExit) as e:
        I.main(["--n", "2", "build"])
    assert e.value.code == 2 and "'build' comes first" in capsys.readouterr().err


def test_the_build_command_line_records_its_command_and_reuses_a_finished_build(tmp_path):
    from model.checkpoint import save_model
    model, tok = _model_and_tok()
    save_model(model, str(tmp_path / "ckpt"), tok)
    argv = ["build", "--init_from", str(tmp_path / "ckpt"), "--out", str(tmp_path / "data"), "--k", "2",
            "--n_prompts", "4", "--n_val", "2", "--seed", "5", "--max_new_tokens", "4", "--device", "cpu"]
    with one_thread():
        side = I.main(argv)
    assert side["command"].startswith("python -m nanoalign.tasks.instruct build --init_from")
    assert json.load(open(tmp_path / "data" / D.SIDECAR))["k"] == 2
    assert I.main(argv)["reused"]


def test_the_build_command_line_names_chat_format_for_a_checkpoint_without_a_chat_template(tmp_path, capsys):
    """A checkpoint whose tokenizer has no chat template: a clear error, exit code 2, naming this
    command's flag; --chat_format then builds, and is part of what the build is."""
    from model.checkpoint import save_model
    from model.tokenizer import Tokenizer
    model, tok = _model_and_tok()
    bare = Tokenizer(tok.tok, bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id)
    save_model(model, str(tmp_path / "bare"), bare)
    bare_argv = ["build", "--init_from", str(tmp_path / "bare"), "--out", str(tmp_path / "d2"), "--k", "2",
                 "--n_prompts", "2", "--n_val", "2", "--max_new_tokens", "4", "--device", "cpu"]
    with pytest.raises(SystemExit) as e:
        I.main(bare_argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"error: {tmp_path / 'bare'}: no chat template"), err
    assert "name a fallback format with --chat_format (one of chatml," in err   # this command's flag
    # named, the format is spoken, and it is part of what the build is: another format, another build
    with one_thread():
        side = I.main(bare_argv + ["--chat_format", "chatml"])
    assert side["chat_format"] == "chatml" and side["counts"]["train"]["prompts"] == 2
    recs = D.load_samples(str(tmp_path / "d2"), "train")
    assert all(r["prompt"] for r in recs)
    with pytest.raises(SystemExit) as e:
        I.main(bare_argv + ["--chat_format", "inst"])
    assert e.value.code == 2 and "chat_format 'chatml' (asked 'inst')" in capsys.readouterr().err
