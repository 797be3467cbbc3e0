"""The `instruct` task (experiments/instruct.py), its on-policy data build (experiments/instruct_data.py)
and the task registry (experiments/tasks.py): each scorer on hand-written responses, splits disjoint
by fact and wording, the concise / explains conflict, the clear errors, a deterministic, cached build."""
import json
import os
import statistics
import types

import pytest
from hypothesis import given, strategies as st

from experiments import instruct as I
from experiments import instruct_data as D
from experiments.tasks import UnknownTaskError, get_task
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


def test_json_rejects_extra_keys_and_non_objects():
    p = f'{Q} Answer in JSON with the keys "answer".'
    assert score(p, '{"answer": "Paris"}')["follows"] == 1.0
    for bad in ('{"answer": "Paris", "city": "Paris"}', '["Paris"]', "answer: Paris", '{"answer": "Paris"'):
        assert score(p, bad)["follows"] == 0.0, bad


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
    ("What is 23 + 45? Do not use any commas.", ["68", "23 + 45 = 68.", "20 + 40 = 60 and 3 + 5 = 8 so 68",
                                                 "sixty-eight? No: 68", '{"answer": 68}'],
     ["69", "23 + 45 = 67.", "", "I cannot add."]),
    ("What is 7 times 8? Do not use any commas.", ["56", "7 times 8 is 56 because 7 groups of 8 make 56."],
     ["54", "7 times 8 is 48."]),
    ("What is the capital of Australia? Do not use any commas.", ["Canberra.", "canberra", "Not Sydney: Canberra"],
     ["Sydney.", "Sydney, then Melbourne, then Canberra? Sydney.", "Australia."]),
    ("What is the capital of Ukraine? Do not use any commas.", ["Kyiv", "Kiev"], ["Moscow"]),
    ("How many centimeters are in 3 meters? Do not use any commas.",
     ["300", "3 meters is 300 centimeters.", "One meter is 100 centimeters so 3 meters is 300."],
     ["30", "3 meters is 3000 centimeters."]),
    ("How many grams are in 12 kilograms? Do not use any commas.", ["12,000 grams", "12000"], ["1200"]),
    ("How many times does the letter 'r' appear in the word 'strawberry'? Do not use any commas.",
     ["3", "three times", "The letter r appears 3 times."], ["2", "twice"]),
    ("Sort these words alphabetically: tiger, apple, kettle. Do not use any commas.",
     ["apple, kettle, tiger", "* apple\n* kettle\n* tiger", "tiger apple kettle sorted: apple kettle tiger"],
     ["apple, tiger, kettle", "tiger, apple, kettle", "apple kettle"]),
])
def test_correct_on_written_responses(prompt, right, wrong):
    for r in right:
        assert score(prompt, r)["correct"] == 1.0, r
    for r in wrong:
        assert score(prompt, r)["correct"] == 0.0, r


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


def test_an_unknown_task_name_is_an_error():
    assert get_task("arith").OBJECTIVES["correct"] and get_task("instruct") is I
    with pytest.raises(UnknownTaskError, match="task 'arithmetic' is unknown; choose from arith, instruct"):
        get_task("arithmetic")


def test_the_tasks_share_one_interface():
    for name in ("arith", "instruct"):
        t = get_task(name)
        for attr in ("OBJECTIVES", "oracle_scores", "rationale", "sft_rows", "preference_rows", "rows",
                     "test_prompts", "warm_start", "build_tokenizer"):
            assert hasattr(t, attr), (name, attr)


def test_a_tokenizer_without_a_chat_template_is_an_error(tmp_path):
    stub = types.SimpleNamespace(encode_prompt=lambda p: [1, 2, 3], chat_template=None, chat_format=None)
    with pytest.raises(D.NoChatTemplateError, match="no chat template and no named chat format"):
        D.encode_prompt(stub, "What is 23 + 45?")
    # a real tokenizer without a template: the byte tokenizer with no named format
    from model.tokenizer import Tokenizer
    bt = byte_tokenizer()
    bare = Tokenizer(bt.tok, bos_id=bt.bos_id, eos_id=bt.eos_id, pad_id=bt.pad_id)
    with pytest.raises(D.NoChatTemplateError):
        I.build(str(tmp_path / "d"), k=2, n_prompts=2, model=tiny(vocab_size=bt.vocab_size), tok=bare,
                init_from="tiny")
    # the same tokenizer API through apply_chat_template only
    only = types.SimpleNamespace(chat_template="x", apply_chat_template=lambda m, add_generation_prompt,
                                 tokenize: [len(m[0]["content"])])
    assert D.encode_prompt(only, "abc") == [3]


def test_preference_rows_need_a_source_of_samples(monkeypatch):
    monkeypatch.delenv(I.ENV, raising=False)
    I.use_samples(None)
    from nanoalign.data import DataError
    with pytest.raises(DataError, match="built on-policy"):
        I.preference_rows(4, 0, "train")
    assert [set(r) for r in I.rows("prompt", 3, 0, "train")] == [{"prompt"}] * 3


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
    monkeypatch.setenv(I.ENV, str(tmp_path / "a"))
    assert I.rows("pref", 10 ** 6, 0, "train") == rows

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

        def stop_after_train(model, tok, task, split, *a):
            calls.append(split)
            if split == "val":
                raise KeyboardInterrupt
            return real(model, tok, task, split, *a)
        monkeypatch.setattr(D, "sample_split", stop_after_train)
        with pytest.raises(KeyboardInterrupt):
            _build(tmp_path / "cut", 3, model, tok)
        monkeypatch.setattr(D, "sample_split", real)
        assert os.path.exists(tmp_path / "cut" / D.PARTIAL)
        _build(tmp_path / "cut", 3, model, tok)
    assert whole["counts"]["train"]["prompts"] == 6
    assert _files(tmp_path / "cut") == _files(tmp_path / "whole")


def test_build_command_line(tmp_path, capsys):
    from model.checkpoint import save_model
    model, tok = _model_and_tok()
    save_model(model, str(tmp_path / "ckpt"), tok)
    argv = ["build", "--init_from", str(tmp_path / "ckpt"), "--out", str(tmp_path / "data"), "--k", "2",
            "--n_prompts", "4", "--n_val", "2", "--seed", "5", "--max_new_tokens", "4", "--device", "cpu"]
    with one_thread():
        side = I.main(argv)
    assert side["command"].startswith("python -m experiments.instruct build --init_from")
    assert json.load(open(tmp_path / "data" / D.SIDECAR))["k"] == 2
    assert I.main(argv)["reused"]
    # a checkpoint whose tokenizer has no chat template: a clear error, exit code 2
    from model.tokenizer import Tokenizer
    bare = Tokenizer(tok.tok, bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id)
    save_model(model, str(tmp_path / "bare"), bare)
    with pytest.raises(SystemExit) as e:
        I.main(["build", "--init_from", str(tmp_path / "bare"), "--out", str(tmp_path / "d2"), "--k", "2",
                "--n_prompts", "2", "--device", "cpu"])
    assert e.value.code == 2 and "no chat template" in capsys.readouterr().err
