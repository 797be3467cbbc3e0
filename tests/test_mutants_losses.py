"""Tests written to kill surviving mutants of the mutation run (docs/mutation.md) in the loss code:
kernels/odds_ratio.py and nanoalign/ (common, dpo, orpo, mo_orpo, meta_aligner).
Each test states a property of the library (a formula written out independently, a documented
default, an exact error message), never a number read off the library's own output."""
import math

import pytest
import torch

from kernels import odds_ratio as odds_mod
from kernels.odds_ratio import log1mexp, odds_ratio_loss
from kernels.seq_logprob import HAS_TRITON, INTERPRET
from nanoalign.common import frozen_copy, reference_logps
from nanoalign.data import make_batch
from nanoalign.dpo import pair_metrics
from nanoalign.testing import tiny_model
from tests.helpers import call_method, method_config, one_thread, response_token_logps


# -- the ORPO odds-ratio term: the backend choice and the Triton route ----------------------------------
AW = [-0.5, -2.0, -1e-3, -3.0, -0.05]       # mean log-probs of chosen responses (all < 0)
AL = [-1.0, -0.1, -0.5, -3.0, -7.0]         # of rejected ones


def z_formula(aw, al):
    """ORPO eq. 2-3 in plain float64 math: log odds(a) = log(e^a / (1 - e^a))."""
    odds = lambda a: math.log(math.exp(a) / (1.0 - math.exp(a)))  # noqa: E731
    return odds(aw) - odds(al)


def kernel_spy(monkeypatch):
    """Record every call of the Triton route (kernels.odds_ratio.OddsRatio.apply), then run it."""
    calls, real = [], odds_mod.OddsRatio

    class Spy:
        @staticmethod
        def apply(*args):
            calls.append(args)
            return real.apply(*args)

    monkeypatch.setattr(odds_mod, "OddsRatio", Spy)
    return calls


triton_here = pytest.mark.skipif(not HAS_TRITON or not (INTERPRET or torch.cuda.is_available()),
                                 reason="needs triton (CUDA, or TRITON_INTERPRET=1 on the CPU)")


@triton_here
def test_odds_ratio_backend_triton_runs_the_kernel_on_both_inputs(monkeypatch):
    # an explicit backend beats NANOALIGN_KERNELS (kernels.seq_logprob.choose_backend's order)
    monkeypatch.setenv("NANOALIGN_KERNELS", "torch")
    calls = kernel_spy(monkeypatch)
    dev = "cuda" if torch.cuda.is_available() and not INTERPRET else "cpu"
    aw = torch.tensor(AW, dtype=torch.float64, device=dev, requires_grad=True)
    al = torch.tensor(AL, dtype=torch.float64, device=dev, requires_grad=True)
    loss, z = odds_ratio_loss(aw, al, backend="triton")
    assert len(calls) == 1 and calls[0][0] is aw and calls[0][1] is al
    assert loss.dtype == z.dtype == torch.float32            # the Triton route returns float32
    want_z = torch.tensor([z_formula(a, b) for a, b in zip(AW, AL)], dtype=torch.float64)
    assert torch.allclose(z.double().cpu(), want_z, rtol=1e-6, atol=1e-6)
    assert torch.allclose(loss.double().cpu(), torch.log1p(torch.exp(-want_z)), rtol=1e-6, atol=1e-6)
    # d loss / d a_w = -sigmoid(-z) / (1 - e^a_w), d loss / d a_l = sigmoid(-z) / (1 - e^a_l)
    gw, gl = torch.autograd.grad(loss.sum(), [aw, al])
    s = torch.sigmoid(-want_z)
    ew, el = torch.exp(torch.tensor(AW, dtype=torch.float64)), torch.exp(torch.tensor(AL, dtype=torch.float64))
    assert torch.allclose(gw.cpu(), -s / (1 - ew), rtol=1e-5, atol=1e-6)
    assert torch.allclose(gl.cpu(), s / (1 - el), rtol=1e-5, atol=1e-6)


@triton_here
def test_odds_ratio_backend_torch_beats_the_environment(monkeypatch):
    monkeypatch.setenv("NANOALIGN_KERNELS", "triton")
    calls = kernel_spy(monkeypatch)
    aw, al = torch.tensor(AW, dtype=torch.float64), torch.tensor(AL, dtype=torch.float64)
    _, z = odds_ratio_loss(aw, al, backend="torch")
    assert calls == []
    assert torch.allclose(z, torch.tensor([z_formula(a, b) for a, b in zip(AW, AL)], dtype=torch.float64))


def test_odds_ratio_names_an_unknown_backend():
    with pytest.raises(ValueError) as e:
        odds_ratio_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), backend="cuda")
    assert str(e.value) == "kernel backend must be auto, triton or torch, got 'cuda'"


def test_log1mexp_is_accurate_to_two_ulps_below_minus_log_2():
    # Maechler (2012): for a < -log 2, log1p(-exp(a)) is accurate; log(-expm1(a)) there loses up to
    # ~3 ulps (log of a number near 1). Measured over every float32 in [-1.69, -0.70]: 1.38 ulps.
    a = torch.linspace(-1.69, -0.70, 20001, dtype=torch.float64).float()
    got = log1mexp(a)
    truth = torch.log1p(-torch.exp(a.double()))        # float64 of the same float32 inputs
    ulp = (torch.nextafter(got, torch.zeros_like(got)) - got).abs().double()
    assert ((got.double() - truth).abs() / ulp).max().item() <= 2.0


# -- the frozen reference's log-probs ---------------------------------------------------------------------
EXAMPLES = [  # prompt + chosen, prompt + rejected: token ids, prompts of 2-4 tokens, unequal lengths
    {"chosen": [5, 6, 7, 8, 9], "n_prompt_chosen": 2, "rejected": [5, 6, 10], "n_prompt_rejected": 2},
    {"chosen": [11, 12, 13, 14, 15, 16, 17], "n_prompt_chosen": 4,
     "rejected": [11, 12, 13, 14, 18, 19], "n_prompt_rejected": 4},
]


def rows_of(examples):
    """The batch's rows in order (chosen rows first, then rejected): (ids, n_prompt)."""
    return ([(e["chosen"], e["n_prompt_chosen"]) for e in examples]
            + [(e["rejected"], e["n_prompt_rejected"]) for e in examples])


@pytest.mark.parametrize("reduction", ["default", "sum", "mean"])
def test_reference_logps_sums_by_default_and_honours_mean(reduction):
    with one_thread():
        ref = tiny_model(seed=3, init_std=0.3)
        batch = make_batch(EXAMPLES, "pref", 0)
        got = reference_logps(ref, batch) if reduction == "default" else reference_logps(ref, batch, reduction)
        per_token = [response_token_logps(ref, ids, n) for ids, n in rows_of(EXAMPLES)]
        agg = (lambda t: t.mean()) if reduction == "mean" else (lambda t: t.sum())
        want = torch.stack([agg(t) for t in per_token])
        assert torch.allclose(got.double(), want, rtol=1e-4, atol=1e-4)


# -- DPO's metrics -------------------------------------------------------------------------------------------
def test_reward_accuracy_counts_only_strictly_positive_margins():
    m = pair_metrics(torch.tensor([0.0, 0.0, 2.0, -1.0]), 0.5)
    assert m["reward_acc"] == 0.25 and m["margin"] == pytest.approx(0.5 * 1.0 / 4)


def test_dpo_at_its_frozen_start_has_zero_margin_and_zero_reward_accuracy():
    with one_thread():
        model = tiny_model(seed=1, init_std=0.1)
        _, m = call_method("dpo", model, make_batch(EXAMPLES, "pref", 0), ref=frozen_copy(model))
    assert m["margin"] == 0.0 and m["reward_acc"] == 0.0          # h == 0 exactly: no pair has h > 0


# -- MO-ORPO's schedules ---------------------------------------------------------------------------------------
MO_EXAMPLES = [
    {"align": EXAMPLES[0],
     "sj": {"chosen": [20, 21, 22, 23, 24, 25, 30], "n_prompt_chosen": 6,
            "rejected": [20, 21, 22, 23, 24, 25, 31], "n_prompt_rejected": 6}},
    {"align": EXAMPLES[1],
     "sj": {"chosen": [40, 41, 42, 43, 31], "n_prompt_chosen": 4,
            "rejected": [40, 41, 42, 43, 30], "n_prompt_rejected": 4}},
]


@pytest.mark.parametrize("kind, epoch, epochs, trained", [
    ("epoch_by_epoch", 0.5, 2.0, "align"), ("epoch_by_epoch", 1.5, 2.0, "sj"),
    ("task_by_task", 0.5, 2.0, "sj"), ("task_by_task", 1.5, 2.0, "align"),
])
def test_a_schedule_scores_only_the_task_it_trains(kind, epoch, epochs, trained):
    other = "sj" if trained == "align" else "align"
    with one_thread():
        model = tiny_model(seed=2, init_std=0.1)
        loss, m = call_method(kind, model, make_batch(MO_EXAMPLES, "mo", 0), epoch=epoch, epochs=epochs)
    assert m["task_sj"] == float(trained == "sj")
    assert f"z_{trained}" in m and f"L_{trained}" in m
    assert not [k for k in m if k.endswith("_" + other) and k != "task_sj"]   # the other task: not run
    assert loss.item() == pytest.approx(m[f"L_{trained}"] * len(MO_EXAMPLES), rel=1e-5)


# -- MetaAligner: seeded data, and the corrector's defaults ------------------------------------------------------
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


# -- ORPO's prompt_loss on CUDA (not run on a CPU-only machine) -----------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the padding column's device")
def test_orpo_prompt_loss_runs_on_cuda_and_matches_the_cpu():
    batch = make_batch(EXAMPLES, "pref", 0)
    model = tiny_model(seed=6, init_std=0.1)
    cpu, _ = call_method("orpo", model, batch, prompt_loss=True)
    gpu_batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}
    gpu, _ = call_method("orpo", model.cuda(), gpu_batch, prompt_loss=True)
    assert gpu.item() == pytest.approx(cpu.item(), rel=1e-3, abs=1e-4)
