"""Scaling out (nanoalign/dist.py, train.py): DDP / FSDP2 across two CPU processes (torchrun): two
ranks equal one process with twice the batch, FSDP checkpoints resume exactly, the rank's device,
and cleanup. (Activation checkpointing, the model's, is tested in tests/model/test_model.py.)"""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from nanoalign import REGISTRY, dist
from tests.helpers import ROOT


# -- two processes -------------------------------------------------------------------------------
def _run(args, nproc):
    """Run train.py (under torchrun when nproc > 1); returns its stdout and then its stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    pre = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_port", str(29500 + os.getpid() % 1000)] if nproc > 1 else [sys.executable])
    r = subprocess.run(pre + [os.path.join(ROOT, "train.py")] + args, cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout + r.stderr


# the device two ranks train on here (with fewer than two GPUs they fall back to the CPU), so
# that the one-process run they are compared with computes on the same kind of device
TWO_RANK_DEVICE = "cuda" if torch.cuda.device_count() >= 2 else "cpu"


def _params(d):
    return load_file(os.path.join(d, "ckpt", "model.safetensors"))


# sft: a per-token loss, so ranks hold different numbers of units; conjoined: two forwards (the
# alignment and self-judgement batches) before one backward; dpo: the frozen reference; FSDP2
# with every other block checkpointed on the two ranks only (checkpointing changes no number); and
# task_by_task: a schedule over the epochs of the data all ranks see (here 0.75 epochs: the SJ task
# for 2 steps, then alignment), which the ranks must count alike, as one process would
@pytest.mark.parametrize("parallel,method,ckpt", [("ddp", "sft", "false"), ("fsdp", "sft", "false"),
                                                  ("ddp", "conjoined", "false"), ("fsdp", "dpo", "false"),
                                                  ("fsdp", "orpo", "half"), ("ddp", "task_by_task", "false")])
def test_two_ranks_equal_one_process_with_twice_the_batch(tmp_path, start, parallel, method, ckpt):
    # lr 1e-4: the two runs sum the same gradients in a different order (~1e-9 apart), and AdamW's
    # first steps move a weight by ~lr whatever its gradient's size, so for a gradient near eps the
    # rounding can flip a step of up to lr; a small lr keeps that under the 1e-5 being tested
    common = ["--method", method, "--init_from", start, "--max_steps", "3", "--n_train", "64",
              "--val_data", "", "--final_eval", "false", "--warmup_steps", "1", "--lr", "1e-4",
              "--seed", "5", "--grad_accum", "2", "--device", TWO_RANK_DEVICE]
    _run(common + ["--batch_size", "8", "--out_dir", str(tmp_path / "one")], 1)
    out = _run(common + ["--batch_size", "4", "--parallel", parallel, "--grad_checkpoint", ckpt,
                         "--out_dir", str(tmp_path / "two")], 2)
    assert "x2," in out and "(--batch_size 4 x --grad_accum 2 x 2 processes)" in out and "peak memory" in out
    one, two = _params(tmp_path / "one"), _params(tmp_path / "two")
    start_w = load_file(os.path.join(start, "model.safetensors"))
    assert one.keys() == two.keys()
    moved = 0.0
    for k in one:
        assert (one[k] - two[k]).abs().max() <= 1e-5, k
        moved = max(moved, (one[k] - start_w[k]).abs().max().item())
    assert moved > 5e-5                                           # 3 steps did change the weights
    # the log too: the loss and the method's metrics of each step (sft's nll_per_token is per token
    # of the global batch, though the ranks hold different numbers of tokens)
    def logged(d):
        return [r for r in map(json.loads, open(os.path.join(d, "metrics.jsonl"))) if r["split"] == "train"]
    names = ["loss", *REGISTRY[method].metrics]
    for r1, r2 in zip(logged(tmp_path / "one"), logged(tmp_path / "two"), strict=True):
        for k in names:
            assert (k in r1) == (k in r2), k
            if k in r1:
                assert r2[k] == pytest.approx(r1[k], rel=1e-4, abs=1e-6), (r1["step"], k)
    # tok_per_s is the whole run's: tok_per_s times the seconds since the last log line (elapsed
    # from one line to the next) gives the tokens of both ranks, those of the one process
    def tokens(d):
        recs = logged(d)
        since = [0.0] + [r["elapsed"] for r in recs]
        return [r["tok_per_s"] * (r["elapsed"] - t) for r, t in zip(recs, since)]
    assert tokens(tmp_path / "two") == pytest.approx(tokens(tmp_path / "one"), rel=1e-3)


def test_fsdp_checkpoint_resumes_exactly(tmp_path, start):
    """The full state gathered from the shards (weights + AdamW by parameter name) and loaded back."""
    common = ["--method", "orpo", "--init_from", start, "--n_train", "64", "--val_data", "",
              "--final_eval", "false", "--warmup_steps", "1", "--lr", "1e-3", "--seed", "5",
              "--batch_size", "4", "--parallel", "fsdp"]
    _run(common + ["--max_steps", "4", "--out_dir", str(tmp_path / "a")], 2)
    _run(common + ["--max_steps", "2", "--out_dir", str(tmp_path / "b")], 2)
    # the number of processes is kept, and a resume by another number refused (test_resume.py)
    assert json.loads((tmp_path / "b" / "ckpt" / "state.json").read_text())["world"] == 2
    _run(common + ["--max_steps", "4", "--out_dir", str(tmp_path / "b"), "--resume"], 2)
    a, b = _params(tmp_path / "a"), _params(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ddp_on_policy_run_resumes_exactly(tmp_path, start):
    """Each rank samples from its own RNG stream (seeded seed + 1000 * rank): a resume must give
    every rank its own stream back, not rank 0's, or the resumed ranks sample alike."""
    common = ["--method", "self_judge", "--init_from", start, "--n_train", "32", "--val_data", "",
              "--final_eval", "false", "--warmup_steps", "1", "--lr", "1e-3", "--seed", "5",
              "--batch_size", "2", "--gen_max_tokens", "4", "--parallel", "ddp"]
    _run(common + ["--max_steps", "3", "--out_dir", str(tmp_path / "a")], 2)
    _run(common + ["--max_steps", "1", "--out_dir", str(tmp_path / "b")], 2)
    _run(common + ["--max_steps", "3", "--out_dir", str(tmp_path / "b"), "--resume"], 2)
    a, b = _params(tmp_path / "a"), _params(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("device,local_rank,ranks,gpus,want", [
    ("cuda", 1, 2, 1, "cpu"),            # one GPU, two ranks: both on the CPU, not cuda:1
    ("cuda", 0, 2, 0, "cpu"),            # no GPU at all
    ("cuda", 1, 2, 2, "cuda:1"),         # a GPU for each rank
    ("cuda:0", 1, 2, 8, "cuda:1"),       # any CUDA device: the rank's own GPU
    ("cpu", 1, 2, 8, "cpu"),
])
def test_rank_device(monkeypatch, device, local_rank, ranks, gpus, want):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    got, note = dist.rank_device(device, local_rank, ranks)
    assert got == want
    if want == "cpu" and device.startswith("cuda"):
        assert f"{ranks} ranks on this machine but {gpus} GPU(s)" in note
        assert "\n" not in note
    else:
        assert note is None


def test_resolve_device_is_cuda_only_where_there_is_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dist.resolve_device("auto") == "cuda" and dist.resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dist.resolve_device("auto") == "cpu" and dist.resolve_device("cuda:1") == "cuda:1"


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="a GPU for each rank: no fallback")
def test_fewer_gpus_than_ranks_train_on_the_cpu(tmp_path, start):
    out = _run(["--method", "sft", "--init_from", start, "--max_steps", "1", "--n_train", "16",
                "--val_data", "", "--final_eval", "false", "--batch_size", "4",
                "--parallel", "fsdp", "--device", "cuda", "--out_dir", str(tmp_path / "run")], 2)
    assert "on cpu x2" in out
    assert out.count("ranks on this machine but") == 1          # one note, from rank 0


CLEANUP_SCRIPT = """
import os, sys, torch
from torch.distributed.fsdp import fully_shard
from nanoalign import dist
from tests.helpers import tiny

def gloo_threads():
    names = []
    for t in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{t}/comm") as f:
            names.append(f.read().strip())
    return sorted(n for n in names if "gloo" in n)

def run():   # what train() leaves behind: a sharded model, its optimizer, a gathered full state
    assert dist.setup("cpu") == "cpu" and dist.world() == 1
    model = tiny(0)
    for layer in model.layers:
        fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 101, (2, 9))
    model.logits(model(x)).sum().backward()
    opt.step()
    dist.full_state(model, opt)
    dist.barrier()

run()
before = gloo_threads()
dist.cleanup()
print("gloo threads before:", len(before), "after:", len(gloo_threads()))
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc")
def test_cleanup_frees_the_group_and_joins_its_threads():
    """destroy_process_group() alone leaves the gloo group of an FSDP2 run alive (its DeviceMesh
    holds it), and its threads then ran on through interpreter shutdown and exit()."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, "WORLD_SIZE": "1",
           "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(30500 + os.getpid() % 1000)}
    r = subprocess.run([sys.executable, "-c", CLEANUP_SCRIPT], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    before, after = (int(n) for n in r.stdout.split("before:")[1].split("after:"))
    assert before >= 2 and after == 0, r.stdout


COLLECTIVES_SCRIPT = """
import torch, torch.distributed as td
from nanoalign import dist

# the group dist.setup makes for ranks on CUDA, on this CPU machine: every backend becomes gloo, for
# the same device types (NCCL serves CUDA tensors only, a bare gloo both), so that a CPU tensor in a
# collective fails here exactly where NCCL would refuse it
spec = []
for part in dist.group_backend("cuda").split(","):
    device, _, backend = part.rpartition(":")
    spec += [f"{d}:gloo" for d in ([device] if device else ["cuda"] if backend == "nccl" else ["cpu", "cuda"])]
td.init_process_group(",".join(spec))
r = dist.rank()
assert dist.all_sum(r + 1) == 3                                   # the loop's stop flag, the metrics
assert dist.gather(r) == [0, 1]
assert dist.mean_metrics({"loss": float(r)}, weight=1 + r) == {"loss": 2 / 3}
print("collectives ok on rank", r)
td.destroy_process_group()
"""


def two_ranks_run(script, text, port_base):
    """`text` written to `script` and run on two CPU ranks by torchrun (a port of its own per pytest
    process, so that parallel sessions do not collide); the finished process."""
    script.write_text(text)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(port_base + os.getpid() % 1000), str(script)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def test_the_collectives_of_ranks_on_cuda_have_a_backend_for_their_cpu_tensors(tmp_path):
    """Ranks on CUDA were joined by NCCL alone, which takes no CPU tensor: the stop flag's all_sum,
    a CPU tensor, would have ended every run on two or more GPUs at its first step."""
    r = two_ranks_run(tmp_path / "collectives.py", COLLECTIVES_SCRIPT, 31500)
    assert r.returncode == 0 and r.stdout.count("collectives ok") == 2, r.stdout[-3000:] + r.stderr[-3000:]


ROLLOUT_METRICS_SCRIPT = """
import json, types
import train
from nanoalign import dist, onpolicy
from nanoalign.tasks import arith as task
from tests.helpers import tiny

dist.setup("cpu")
X = "What is 2 + 2?"

def micro_batch(hits, misses, ties, samples, seconds):
    # the metrics of a rollout that judged these pairs ('4.' is the oracle's pick over '5.', a tie
    # with '4.'; p >= 1/2 picks the first) and drew `samples` in `seconds` of sampling
    pairs = [("4.", "5.", 0.9)] * hits + [("4.", "5.", 0.1)] * misses + [("4.", "4.", 0.9)] * ties
    a, b, p = (list(x) for x in zip(*pairs))
    clock = types.SimpleNamespace(laps={"t_sample": seconds})
    return {**onpolicy.agreement(task, [X] * len(pairs), a, b, p),
            **onpolicy.cost([[1]] * samples, clock, samples)}

# rank 0: one hit of 3 ranked pairs, 4 samples in 1 s; then only ties, 4 samples in 3 s
# rank 1: one hit of 1, 6 samples in 2 s; then 3 hits of 3, 6 samples in 2 s
mets = iter([[micro_batch(1, 2, 1, 4, 1.0), micro_batch(0, 0, 4, 4, 3.0)],
             [micro_batch(1, 0, 3, 6, 2.0), micro_batch(3, 0, 1, 6, 2.0)]][dist.rank()])
method = types.SimpleNamespace(unit="n_examples", rollout=lambda model, b, run, cfg: (b, next(mets)))
_, got = train.rollout(tiny(), method, [{"n_examples": 4}] * 2, None, train.make_config(method="self_judge"))
print("step metrics:", json.dumps(got))
dist.cleanup()
"""


def test_two_ranks_log_the_whole_steps_judge_agreement_and_sampling_rate(tmp_path):
    """judge_agree over two ranks of two micro-batches each is the fraction of all the pairs the
    oracle ranked: by hand, 1 + 1 + 3 hits of 3 + 1 + 3 pairs = 5/7 (a mean of the ranks' fractions,
    each weighted by its examples, gave 2/3); samples_per_s is the whole run's: rank 0 drew 8
    samples in 4 s of sampling, rank 1 12 in 4 s, together 2 + 3 = 5 per second (the ranks' mean
    was about one rank's); t_sample stays a rank's seconds (the ranks sample at the same time)."""
    r = two_ranks_run(tmp_path / "rollout_metrics.py", ROLLOUT_METRICS_SCRIPT, 32500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    got = json.loads(r.stdout.split("step metrics:")[1])
    assert got["judge_agree"] == pytest.approx(5 / 7) and got["judge_pairs"] == 7
    assert got["samples_per_s"] == pytest.approx(5.0) and got["t_sample"] == pytest.approx(4.0)
