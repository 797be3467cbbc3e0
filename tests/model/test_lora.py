"""LoRA (model/lora.py): the adapters at init are the base model, only they learn, a merged checkpoint
equals the adapted model, the adapters-off reference is the base, and a LoRA run resumes exactly and
saves its adapters only."""
import copy
import os
import re

import pytest
import torch
from hypothesis import given, settings, strategies as st
from safetensors.torch import load_file

import train
from model.checkpoint import CheckpointError, load, save_adapters, save_model
from model.lora import TARGETS, AdaptersOff, LoRALinear, apply_lora, main as merge_main, merge
from nanoalign import REGISTRY
from nanoalign.tasks import arith as task
from tests.helpers import ids, one_thread, tiny

targets = st.lists(st.sampled_from(sorted(TARGETS)), min_size=1, unique=True).map(",".join)


def train_adapters(model, steps=3):
    """A few AdamW steps on random tokens, so B != 0 and the adapters change the model."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for s in range(steps):
        x = ids(100 + s)
        loss = torch.nn.functional.cross_entropy(model.logits(model(x[:, :-1])).flatten(0, 1),
                                                 x[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model


@settings(max_examples=10, deadline=None)
@given(r=st.integers(1, 8), alpha=st.sampled_from([1.0, 8.0, 16.0, 32.0]), t=targets,
       seed=st.integers(0, 100))
def test_lora_at_init_is_the_base_model(r, alpha, t, seed):
    base = tiny(seed)
    lora = apply_lora(copy.deepcopy(base), r, alpha, 0.0, t)
    x = ids(seed)
    with torch.no_grad():
        assert torch.equal(lora.logits(lora(x)), base.logits(base(x)))


@settings(max_examples=20, deadline=None)
@given(r=st.integers(1, 8), alpha=st.sampled_from([1.0, 8.0, 16.0, 32.0]), n=st.integers(1, 5),
       seed=st.integers(0, 100))
def test_an_adapted_linear_is_w_plus_alpha_over_r_times_b_a(r, alpha, n, seed):
    """Hu et al. (LoRA, arXiv:2106.09685, eq. 3): h = W x + (alpha / r) B A x. Computed here in float64
    from the layer's own A and B, made non-zero (at init B = 0 hides the scale), for the forward and
    for merged_weight, which a merged checkpoint is saved from. alpha != r in most draws, so a scale
    of alpha, or of 1, or of r / alpha, fails."""
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.Linear(12, 7, bias=False)
    layer = LoRALinear(base, r, alpha, 0.0)
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(7, r, generator=g))
    x = torch.randn(n, 12, generator=g)
    W, A, B = (t.detach().double() for t in (base.weight, layer.lora_A, layer.lora_B))
    want = x.double() @ (W + (alpha / r) * B @ A).T                      # (n, 7)
    with torch.no_grad():
        assert torch.allclose(layer(x).double(), want, rtol=1e-5, atol=1e-5)
        assert torch.allclose(layer.merged_weight().double(), W + (alpha / r) * B @ A, rtol=1e-5, atol=1e-6)


@settings(max_examples=5, deadline=None)
@given(r=st.integers(1, 8), t=targets, seed=st.integers(0, 100))
def test_only_adapters_get_gradients(r, t, seed):
    model = apply_lora(tiny(seed), r, 16.0, 0.1, t)
    with torch.no_grad():                      # B = 0 would leave A's gradient exactly zero
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_()
    x = ids(seed)
    model.logits(model(x)).logsumexp(-1).sum().backward()
    n_adapters = 0
    for name, p in model.named_parameters():
        if ".lora_" in name:
            n_adapters += 1
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name
    assert n_adapters == 2 * len(t.split(",")) * model.cfg.n_layers


def saved_lora_run(tmp_path):
    """(base, model): a 1-layer base saved in tmp_path/base, and the model loaded from it with trained
    adapters, saved as a LoRA checkpoint in tmp_path/lora."""
    base = tiny(1, vocab_size=task.build_tokenizer().vocab_size)    # an embedding row for every token
    save_model(base, str(tmp_path / "base"), task.build_tokenizer())
    model, tok = load(str(tmp_path / "base"))
    train_adapters(apply_lora(model, 4, 8.0, 0.0))
    save_adapters(model, str(tmp_path / "lora"), tok, str(tmp_path / "base"))
    return base, model


def test_merged_checkpoint_equals_adapter_model(tmp_path):
    base, model = saved_lora_run(tmp_path)
    merge_main(["--adapter", str(tmp_path / "lora"), "--out", str(tmp_path / "merged")])
    assert not os.path.exists(tmp_path / "merged" / "adapter_config.json")
    merged, _ = load(str(tmp_path / "merged"))
    reloaded, _ = load(str(tmp_path / "lora"))                  # adapters back on their base
    x = ids(7)
    with torch.no_grad():
        want = model.logits(model(x))
        assert (merged.logits(merged(x)) - want).abs().max() <= 1e-5
        assert torch.equal(reloaded.logits(reloaded(x)), want)
        assert (want - base.logits(base(x))).abs().max() > 1e-3  # the adapters did change it


def test_a_lora_checkpoint_whose_base_moved_names_its_base_model_field(tmp_path):
    model = tiny(1, vocab_size=task.build_tokenizer().vocab_size)
    save_model(model, str(tmp_path / "base"), task.build_tokenizer())
    save_adapters(apply_lora(model, 4, 8.0), str(tmp_path / "lora"), task.build_tokenizer(),
                  str(tmp_path / "base"))
    os.rename(tmp_path / "base", tmp_path / "moved")
    d = re.escape(str(tmp_path))
    with pytest.raises(CheckpointError, match=rf"^{d}/lora/adapter_config\.json: field "
                                              rf"'base_model' is '{d}/base', not a directory"):
        load(str(tmp_path / "lora"))


def test_a_lora_checkpoint_loads_and_merges_in_bfloat16(tmp_path):
    # sample.py --dtype bfloat16 on a LoRA run's checkpoint; a LoRA run started from one merges it
    _, model = saved_lora_run(tmp_path)
    x = ids(7)
    with torch.no_grad():
        want = model.logits(model(x))
        half, _ = load(str(tmp_path / "lora"), torch.bfloat16)
        assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
        assert (half.logits(half(x)) - want).abs().max() < 0.02   # the adapters move it 0.2
        merge(half)
        assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
        assert (half.logits(half(x)) - want).abs().max() < 0.02   # the adapters move it 0.2


def test_reference_with_adapters_off_is_the_base():
    base = tiny(2)
    model = train_adapters(apply_lora(copy.deepcopy(base), 4, 16.0, 0.2))
    ref = AdaptersOff(model)
    x = ids(3)
    with torch.no_grad():
        assert torch.equal(ref.logits(ref(x)), base.logits(base(x)))
        assert not torch.equal(model.logits(model(x)), base.logits(base(x)))
    assert model.training                       # the reference does not flip the policy's mode
    assert list(ref.parameters()) == []         # and holds no weights of its own


def test_lora_dpo_resumes_exactly_and_saves_adapters_only(tmp_path, start):
    from tests.helpers import run_cfg
    kw = dict(method="dpo", init_from=start, lora_r=4, lora_alpha=8.0, lora_dropout=0.1, lr=1e-2)
    straight = train.train(run_cfg(tmp_path / "a", **kw))
    first = train.train(run_cfg(tmp_path / "b", **kw), stop_at=3)
    second = train.train(run_cfg(tmp_path / "b", resume=True, **kw))
    assert first + second == straight
    ck = tmp_path / "b" / "run" / "ckpt"
    assert not os.path.exists(ck / "model.safetensors")
    assert all(".lora_" in k for k in load_file(str(ck / "adapter_model.safetensors")))
    with pytest.raises(Exception, match="needs a base checkpoint"):
        train.train(run_cfg(tmp_path / "c", method="dpo", lora_r=4))


def test_lora_in_bf16_from_a_float16_start_resumes_exactly(tmp_path, start):
    """Under bf16 autocast the run's start has its weights on bf16 ties moved off them
    (compute.off_bf16_ties, in train.init_model); a resumed LoRA run loads its base from the start
    again, beside its adapters, and must move the same weights, or the frozen embedding (read in
    float32) differs from the unbroken run's."""
    from model.checkpoint import load
    from model.hf import save_model
    from tests.helpers import run_cfg
    model, tok = load(start)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())                   # a float16 checkpoint: 1 in 8 weights on ties
    save_model(model, str(tmp_path / "fp16"), tokenizer=tok)
    kw = dict(method="dpo", init_from=str(tmp_path / "fp16"), lora_r=4, lora_alpha=8.0, lr=1e-2, dtype="bfloat16")
    straight = train.train(run_cfg(tmp_path / "a", **kw))
    first = train.train(run_cfg(tmp_path / "b", **kw), stop_at=3)
    second = train.train(run_cfg(tmp_path / "b", resume=True, **kw))
    assert first + second == straight


@pytest.mark.parametrize("name", [m for m in REGISTRY if not REGISTRY[m].main])   # a chain: its own tests
def test_every_method_trains_its_adapters_against_the_base_as_its_reference(tmp_path, start, monkeypatch, name):
    """--lora_r for every method, not DPO's alone: the run trains its adapters (the checkpoint holds
    them alone, moved from B = 0) and, where the method has a reference, each loss sees the start
    as it, now the policy with its adapters off (model.lora.AdaptersOff): a view without weights of
    its own, which Self-Judge and OSP also judge with and the off-policy baseline samples from."""
    from nanoalign.common import reference_logps
    from tests.helpers import own_options, run_cfg
    base, _ = load(start)
    ref_is_base, real = [], REGISTRY[name].loss

    def loss(model, batch, run, cfg):
        if run.ref is not None:
            ref_is_base.append(torch.equal(reference_logps(run.ref, batch), reference_logps(base, batch)))
        return real(model, batch, run, cfg)
    monkeypatch.setattr(REGISTRY[name], "loss", loss)
    cfg = run_cfg(tmp_path, method=name, init_from=start, lora_r=4, lr=1e-2, max_steps=2, batch_size=2,
                  n_train=8, n_val=4, eval_every=0, **own_options(name, gen_max_tokens=4, osp_k=4))
    with one_thread():
        train.train(cfg)
    assert all(ref_is_base) and bool(ref_is_base) == REGISTRY[name].needs_ref
    adapters = load_file(os.path.join(cfg.out_dir, "ckpt", "adapter_model.safetensors"))
    assert adapters and all(".lora_" in k for k in adapters)
    assert any(v.abs().max() > 0 for k, v in adapters.items() if "lora_B" in k)


def test_a_full_run_started_from_a_lora_checkpoint_trains_every_weight(tmp_path):
    # osp --init_from out/pref_aug/ckpt (a --lora_r run) without --lora_r: the adapters are merged into
    # the base and every weight trains, as from any other checkpoint; apply_lora had frozen the
    # embeddings and norms, and merge left them frozen: the start line said "(106M trained)" of 135M
    base, _ = saved_lora_run(tmp_path)
    cfg = train.make_config(method="sft", init_from=str(tmp_path / "lora"), lora_r=0)
    model, _ = train.init_model(cfg, task, "cpu")
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen == []
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in base.parameters())


def test_a_merged_judge_keeps_what_its_run_kept_with_it(tmp_path, start, capsys):
    # a LoRA JSFT judge under a principle template keeps principles.json and its config (state.json:
    # the template, the likelihood rule) beside its adapters; sample.py --best_of and self_judge read
    # them. The merged checkpoint dropped both: --best_of on it judged with 'ultrafeedback' and no
    # principles, silently another judge than the one trained
    import sample
    from tests.helpers import run_cfg
    cfg = run_cfg(tmp_path, method="jsft", init_from=start, lora_r=4, judge_template="principle",
                  max_steps=1, max_length=256, grad_accum=1, n_train=8, eval_every=0)
    train.train(cfg)
    ck, out = os.path.join(cfg.out_dir, "ckpt"), str(tmp_path / "merged")
    merge_main(["--adapter", ck, "--out", out])
    for name in ("principles.json", "state.json"):
        with open(os.path.join(ck, name)) as a, open(os.path.join(out, name)) as b:
            assert a.read() == b.read(), name
    assert sample.trained_config(out)["judge_template"] == "principle"
