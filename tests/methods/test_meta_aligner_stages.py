"""MetaAligner's stages and corrector (nanoalign/meta_aligner.py): one stage is one run, 'all' chains
warm-up, equal and preference runs; each stage's rows follow the run's seed; the corrector is greedy
decoding of the edit prompt, 48 new tokens in batches of 64 by default."""
import dataclasses
import json

import train
from nanoalign.testing import tiny_model
from tests.helpers import method_config, one_thread


# -- 'all' chains three runs -----------------------------------------------------------------------
def test_stage_all_chains_three_runs(tmp_path):
    from nanoalign.meta_aligner import run_stages
    from tests.helpers import run_cfg
    cfg = dataclasses.replace(run_cfg(tmp_path, method="meta_aligner", max_steps=2, val_data="",
                                      n_train=64, max_length=384), meta_stage="all")
    final = run_stages(cfg, train.train)
    for st in ("warmup", "equal", "preference"):
        saved = json.load(open(tmp_path / "run" / st / "ckpt" / "state.json"))["config"]
        assert saved["meta_stage"] == st
    assert final.endswith("preference/ckpt")
    assert json.load(open(tmp_path / "run" / "equal" / "ckpt" / "state.json"))["config"]["init_from"] \
        .endswith("warmup/ckpt")


# -- one stage is one run; the corrector is greedy decoding ----------------------------------------
def test_meta_aligner_one_stage_is_one_run(tmp_path):
    import train
    from nanoalign.meta_aligner import run_stages
    seen = []
    cfg = train.make_config(method="meta_aligner", meta_stage="equal", out_dir=str(tmp_path / "o"))
    assert run_stages(cfg, seen.append) == str(tmp_path / "o" / "ckpt")
    assert seen == [cfg]


def test_meta_aligner_all_chains_warmup_equal_preference(tmp_path, capsys):
    import train
    from nanoalign.meta_aligner import run_stages
    seen = []
    out = tmp_path / "o"
    for steps, warm in ((100, 20), (4, 1), (9, 1), (10, 2)):
        seen.clear()
        cfg = train.make_config(method="meta_aligner", meta_stage="all", out_dir=str(out), init_from="start",
                                max_steps=steps, final_eval=True)
        assert run_stages(cfg, seen.append) == str(out / "preference" / "ckpt")
        assert [c.meta_stage for c in seen] == ["warmup", "equal", "preference"]
        assert [c.out_dir for c in seen] == [str(out / s) for s in ("warmup", "equal", "preference")]
        assert [c.init_from for c in seen] == ["start", str(out / "warmup" / "ckpt"), str(out / "equal" / "ckpt")]
        assert [c.max_steps for c in seen] == [warm, steps, steps]
        assert all(c.final_eval is False for c in seen)                    # a bool option stays a bool
        assert cfg.meta_stage == "all" and cfg.out_dir == str(out)          # the caller's config is kept
    printed = capsys.readouterr().out.splitlines()
    assert printed[:3] == [f"== MetaAligner stage '{s}' -> {out / s}" for s in ("warmup", "equal", "preference")]


def test_meta_aligner_correct_is_greedy_decoding_of_the_edit_prompt():
    from model.generate import generate
    from nanoalign.meta_aligner import correct, template
    from nanoalign.testing import tiny_model
    from tests.helpers import byte_tokenizer
    tok = byte_tokenizer()
    model = tiny_model(1, vocab_size=264, max_seq_len=256, init_std=0.3)
    qs = ["What is 1 + 1?", [{"role": "user", "content": "And 2 + 2?"}], "Hi"]
    ys = ["3", "four", "hello"]
    objs = [("correct", "the sum is right")]
    got = correct(model, tok, qs, ys, objs, max_new_tokens=6, batch_size=2)
    assert len(got) == 3
    for q, y, g in zip(qs, ys, got):
        ids = tok.encode_prompt(template(q, y, objs, "better"))
        one = generate(model, [ids], 6, model.cfg.eos_ids + [tok.eos_id], temperature=0, pad_id=tok.pad_id)
        assert g == tok.decode(one[0]).strip()
    assert correct(model, tok, qs, ys, objs, max_new_tokens=6) == got        # batching changes nothing
    assert correct(model, tok, [], [], objs) == []


# -- each stage's rows follow the run's seed; the corrector's defaults -----------------------------
OBJ = {n: f"objective {n}" for n in "abcdef"}


def meta_row(labels, y1="good", y2="bad"):
    return {"prompt": "q?", "chosen": y1, "rejected": y2, "labels": labels,
            "objectives": {k: OBJ[k] for k in labels}}


def objective_order(prompt):
    return prompt.split("objectives: ")[1].split(" | Question")[0]


def test_stage_rows_shuffle_objectives_with_the_run_seed():
    from nanoalign.meta_aligner import build_sets, stage_rows
    rows = [meta_row({n: "1" for n in OBJ})]                   # six winning objectives: 720 orders
    orders = set()
    for seed in range(6):
        cfg = method_config("meta_aligner", meta_stage="preference", seed=seed)
        got = stage_rows(rows, cfg, "train")
        assert got == build_sets(rows, seed)[0]                # Algorithm 1 with the run's seed
        assert got == stage_rows(rows, cfg, "train")           # the same seed, the same order
        orders.add(objective_order(got[0]["prompt"]))
    assert len(orders) > 1                                     # the seed decides the order


def test_warmup_subset_is_a_function_of_the_seed():
    from nanoalign.meta_aligner import stage_rows
    rows = [meta_row({"a": "equal"}, y1=f"g{i}", y2=f"b{i}") for i in range(40)]
    picks = {}
    for seed in (0, 1):
        cfg = method_config("meta_aligner", meta_stage="warmup", seed=seed, batch_size=4)
        first, again = stage_rows(rows, cfg, "train"), stage_rows(rows, cfg, "train")
        assert first == again and len(first) == 4             # max(batch_size, 10% of 40)
        picks[seed] = [w["input"] for w in first]
    assert picks[0] != picks[1]


class FakeTok:
    """What `correct` uses of a tokenizer; no end-of-turn id, so nothing stops a generation early."""
    stop_ids = []

    def __init__(self, pad_id):
        self.pad_id = pad_id

    def encode_prompt(self, text):
        return [3 + len(text) % 50, 4, 5 + len(text) % 7]

    def decode(self, ids):
        return " ".join(map(str, ids))


def test_correct_defaults_to_48_new_tokens_in_batches_of_64(monkeypatch):
    from nanoalign import meta_aligner
    sizes, real = [], meta_aligner.generate

    def spy(model, ids, *a, **kw):
        sizes.append(len(ids))
        return real(model, ids, *a, **kw)

    monkeypatch.setattr(meta_aligner, "generate", spy)
    n = 65
    with one_thread():
        out = meta_aligner.correct(tiny_model(seed=4, max_seq_len=128), FakeTok(pad_id=0),
                                   [f"q{i}" for i in range(n)], [f"y{i}" for i in range(n)], [("c", "right")])
    assert sizes == [64, 1]
    assert len(out) == n and all(len(o.split()) == 48 for o in out)


def test_correct_pads_with_0_when_the_tokenizer_has_no_pad_id():
    from nanoalign.meta_aligner import correct
    with one_thread():
        out = correct(tiny_model(seed=5, max_seq_len=64), FakeTok(pad_id=None), ["What is 1 + 1?", "Hi"],
                      ["3", "hello there"], [("c", "right")], max_new_tokens=3)
    assert len(out) == 2 and all(len(o.split()) == 3 for o in out)
