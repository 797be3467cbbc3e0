"""
One training step, ours side by side with TRL's ORPOTrainer and DPOTrainer: the median step time
and the peak memory of each, same rows, same batch, in one run, and the ratios.

    python -m bench.train_speed                     # SmolLM2-135M-Instruct on the CPU (issue #29)
    python -m bench.train_speed --preset tiny       # a random 0.1M model: checks the harness (1-2 min)
    python -m bench.train_speed --preset gpu_1p7b   # SmolLM2-1.7B's shape on one GPU (bf16, + Liger),
                                                    # then the largest batch at 2048 tokens
    python -m bench.train_speed --preset gpu_1p7b --largest_batch skip   # (only: the search alone)
    python -m bench.train_speed --preset gpu_1p7b --device cpu --layers 1 --max_length 64 \\
        --steps 1 --warmup 1                        # its rehearsal on the CPU: only sizes differ

Each measurement runs in a process of its own, so that its peak memory (peak RSS on the CPU, peak
allocated on CUDA) is its own:
- ours: this file as `python -m bench.train_speed --child ...`, the training loop's own step
  (train.py: make_batch, accumulate_gradients, clip, AdamW) without its logging and checkpointing;
- TRL: this file as a script under `python -I`, in TRL's own environment (--trl_python, default
  $TRL_PYTHON or /work/venv-trl/bin/python) and a working directory outside the repository: the
  project's top-level kernels/ would shadow Hugging Face's `kernels` package, which transformers
  imports. Only `trl_child` below imports TRL / transformers; it reads no project module.

The rows (`make_rows`) are deterministic conversations, so both sides render them with the same chat
template: 256 rows, prompt ~50 tokens, responses ~60 at the cpu preset. Both take the same batch
size (pairs per step) and max_length; the first --warmup steps are not timed. TRL at its defaults
(bf16 autocast, gradient checkpointing on) and at equal settings (float32, or bf16, checkpointing
off); ours as train.py runs it (--dtype, --packed and --grad_checkpoint, each 'auto' unless set
here: SmolLM2's sizes checkpoint every other block), at TRL's equal settings (float32 and bf16,
no checkpointing) and (cpu preset) with --grad_checkpoint true, the trade TRL's default makes.
On CUDA ours runs with train.py's --deterministic (default true: torch's deterministic algorithms),
except at TRL's equal settings (--deterministic false: TRL does not ask for them).

Both sides step through the rows in the file's order (TRL told so: its default draws them at random),
so each step's pairs are the same. Whether both train on the same tokens shows in the table's last
two columns: the first batch's log-probs before any update, as TRL logs them (logps/chosen and
logps/rejected). At float32 ours and TRL's DPOTrainer print the same digits; TRL's ORPOTrainer
appends an EOS token to every response that does not end in one (a ChatML turn ends '<|im_end|>\n'),
one token more per response than ours and its DPOTrainer train on.

Each result is printed (stderr) as it comes, and the table at the end; stopped by SIGTERM (a time
limit: bench/gpu.sh's `timeout`), it prints the table of what it measured by then.
"""
import argparse
import dataclasses
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# model: where the weights come from; prompt/response: words per row (SmolLM2's tokenizer: ~1.2
# tokens a word, and its chat template adds ~30 tokens to a prompt)
PRESETS = {
    "cpu": dict(device="cpu", model="smollm2-135m", rows=256, batch=4, max_length=256, prompt=18,
                response=45, steps=8, warmup=2,
                ours=[dict(dtype="float32", grad_checkpoint="false"),
                      dict(dtype="bfloat16", grad_checkpoint="false"), dict(), dict(grad_checkpoint="true")],
                trl=["default", "float32", "bfloat16"]),
    "tiny": dict(device="cpu", model="tiny", rows=32, batch=4, max_length=128, prompt=6, response=6,
                 steps=2, warmup=1, ours=[dict()], trl=["default"]),
    # SmolLM2-1.7B's shape with random weights (the real ones are not shipped offline), bf16; TRL
    # with Liger's fused kernels where liger_kernel imports; then the largest batch at 2048 tokens
    "gpu_1p7b": dict(device="cuda", model="smollm2-1.7b", rows=256, batch=4, max_length=1024,
                     prompt=350, response=380, steps=5, warmup=2,
                     ours=[dict(dtype="bfloat16"),
                           dict(dtype="bfloat16", grad_checkpoint="false", deterministic=False)],
                     trl=["default", "bfloat16", "liger"], max_batch_length=2048),
}
SMOLLM2_1P7B = dict(vocab_size=49152, dim=2048, n_layers=24, n_heads=32, n_kv_heads=32, hidden_dim=8192,
                    rope_theta=130000.0, max_seq_len=8192, tie_embeddings=True, bos_token_id=1,
                    eos_token_id=2, pad_token_id=2)
# TRL's settings: its defaults, and the ones equal to ours (gradient checkpointing off, as ours is)
TRL_SETTINGS = {"default": {}, "float32": dict(bf16=False, gradient_checkpointing=False),
                "bfloat16": dict(bf16=True, gradient_checkpointing=False),
                "liger": dict(bf16=True, gradient_checkpointing=False, use_liger_kernel=True)}
# the methods with a TRL trainer of their own (trl_child): another would be timed against DPOTrainer
METHODS = ("orpo", "dpo")

WORDS = ("time year people way day man thing woman life child world school state family student "
         "group country problem hand part place case week company system program question work "
         "government number night point home water room mother area money story fact month lot "
         "right study book eye job word business issue side kind head house service friend father "
         "power hour game line end member law car city community name president team minute idea "
         "kid body information back parent face others level office door health person art war "
         "history party result change morning reason research girl guy moment air teacher force "
         "education river light garden music paper market road table window answer voice summer").split()


def make_rows(n, prompt_words, response_words, seed=0):
    """n preference rows as conversations (a user prompt, two assistant answers), the same on
    every run: words drawn by a seeded generator."""
    rng = random.Random(seed)

    def text(k):
        return " ".join(rng.choice(WORDS) for _ in range(k)).capitalize() + "."
    return [{"prompt": [{"role": "user", "content": f"Question {i}: {text(prompt_words)}"}],
             "chosen": [{"role": "assistant", "content": text(response_words)}],
             "rejected": [{"role": "assistant", "content": text(response_words)}]} for i in range(n)]


# -- the model directories -------------------------------------------------------------------------
def model_dir(p, work, checkpoint, layers=None):
    """A Hugging Face directory both sides load: the converted SmolLM2-135M-Instruct (cpu), or random
    weights of a preset's shape saved with a tokenizer (tiny: the built-in task's byte tokenizer;
    1.7B: SmolLM2's, from the converted 135M directory)."""
    import torch
    from model.checkpoint import load, save_model
    from model.model import Transformer, config_from_preset
    smol = os.path.abspath(checkpoint)     # TRL's side runs in another directory
    if p["model"] != "tiny" and not os.path.exists(os.path.join(smol, "config.json")):
        from model.gguf_import import convert, default_gguf_path
        convert(default_gguf_path(), smol)
    if p["model"] == "smollm2-135m":
        return smol
    d = os.path.join(work, p["model"])
    torch.manual_seed(0)
    if p["model"] == "tiny":
        from nanoalign.tasks.arith import build_tokenizer
        tok = build_tokenizer()
        cfg = config_from_preset("tiny", dim=64, n_layers=layers or 2, hidden_dim=176)
    else:
        _, tok = load(smol)
        cfg = config_from_preset("smollm2-135m", **{**SMOLLM2_1P7B, "n_layers": layers or 24})
    save_model(Transformer(cfg), d, tok)
    return d


# -- ours (a child process) --------------------------------------------------------------------------
def ours_child(spec):
    """Steps of our training loop on the spec's rows; returns the step times and the peak memory.
    With spec['max_batch'], instead the largest batch (doubling) that runs one step."""
    import train
    from nanoalign.compute import compute_of     # what train.py's start line prints (nanoalign/runlog.py)
    from nanoalign.data import make_batch
    dev = spec["device"]
    cfg = train.make_config(method=spec["method"], init_from=spec["model_dir"], train_data=spec["rows"],
                            val_data="", batch_size=spec["batch"], max_length=spec["max_length"],
                            device=dev, **spec["setting"])
    # train.py's --deterministic (default true) as train.train sets it up, before the first cuBLAS handle
    deterministic = ", deterministic" if train.set_deterministic(cfg, dev) else ""
    model, tok, method, ex, step = our_trainer(cfg, dev)
    if spec.get("max_batch"):
        return {"max_batch": largest_batch(lambda b: step((ex * b)[:b]))}
    first = first_logps(model, make_batch(ex[:cfg.batch_size], method.eats, tok.pad_id, dev,
                                          train.packed_batches(cfg, model)), spec["method"], cfg)
    times, tokens = [], []
    for i in range(spec["warmup"] + spec["steps"]):
        t = time.perf_counter()
        b = step(ex[i * cfg.batch_size:(i + 1) * cfg.batch_size])[0]
        times.append(time.perf_counter() - t)
        tokens.append(int(b["attn"].sum()) if "attn" in b else 0)
    return {"times": times[spec["warmup"]:], "tokens_per_row": sum(tokens) / len(tokens) / (2 * cfg.batch_size),
            "compute": compute_of(cfg, model) + deterministic, "first": first, **peak(dev)}


def our_trainer(cfg, dev, lr=None):
    """(model, tok, method, examples, step): the run's start as train.train makes it, and its training
    step as step(rows) -> (batch, loss, metrics, gradient norm before clipping): make_batch,
    accumulate_gradients, clip, AdamW at a constant rate (lr, else the schedule's peak, as train.py
    sets it each step), without the loop's logging and checkpointing. bench/trl_parity.py steps it too."""
    import torch
    import train
    from nanoalign import REGISTRY
    from nanoalign.common import Run, frozen_copy
    from nanoalign.data import make_batch
    from nanoalign.tasks import get_task
    method, task = REGISTRY[cfg.method], get_task(cfg.task)
    model, tok = train.init_model(cfg, task, dev)
    model.checkpoint_every = train.checkpoint_every(cfg, model)
    run = Run(tok=tok, ref=frozen_copy(model) if method.needs_ref else None)
    ex = train.load_split(cfg, method, task, "train", run)
    opt = train.make_optimizer(model, cfg)
    for g in opt.param_groups:
        g["lr"] = lr if lr is not None else train.peak_lr(cfg, model, method)
    packed = train.packed_batches(cfg, model)

    def step(rows):
        batch = make_batch(rows, method.eats, tok.pad_id, dev, packed)
        loss, mets = train.accumulate_gradients(model, method, [batch], run, cfg)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev == "cuda":
            torch.cuda.synchronize()
        return batch, loss, mets, norm
    return model, tok, method, ex, step


def first_logps(model, batch, method, cfg):
    """What TRL logs at its first step as logps/chosen and logps/rejected, from our starting weights
    and first batch: the batch's mean over pairs of each response's log-prob, a per-token mean for
    ORPO (TRL's ORPO averages), a sum for DPO. Equal on both sides, they say that both train on the
    same tokens of the same rows (the chat template, the prompt / response split, the EOS): the
    times compare the same work. Computed before the first step, untimed, in the setting's autocast."""
    import torch
    from nanoalign.common import batch_logps
    from nanoalign.compute import autocast
    with torch.no_grad(), autocast(cfg, model):
        lp = batch_logps(model, batch, "mean" if method == "orpo" else "sum").float()   # (2B,)
    B = batch["n_examples"]
    return {"logps/chosen": lp[:B].mean().item(), "logps/rejected": lp[B:].mean().item()}


# -- TRL (a child process in TRL's environment; imports nothing of this repository) ------------------
def trl_child(spec):
    import torch
    import transformers
    import trl
    # TRL's trainers take their rows as a datasets.Dataset, as TRL's users hand them over; `datasets`
    # is TRL's own dependency (pip install trl brings it), imported only here, in TRL's environment
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    if spec["method"] == "orpo":
        from trl.experimental.orpo import ORPOConfig as Config, ORPOTrainer as Trainer
    else:
        from trl import DPOConfig as Config, DPOTrainer as Trainer
    setting = dict(TRL_SETTINGS[spec["setting"]])
    liger = setting.get("use_liger_kernel", False)
    if liger:
        try:
            import liger_kernel  # noqa: F401
        except ImportError:
            return {"skipped": "liger_kernel does not import"}
    dev = spec["device"]
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    rows = [json.loads(line) for line in open(spec["rows"])]

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.t = [], None

        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if dev == "cuda":
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.t)

    InOrder = in_file_order(Trainer, Config, setting)

    def trainer(batch, steps, timer=None, rows=rows):
        model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32).to(dev)
        args = Config(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch,
                      gradient_accumulation_steps=1, max_steps=steps, max_length=spec["max_length"],
                      report_to="none", save_strategy="no", use_cpu=dev == "cpu", seed=0,
                      logging_steps=10_000, logging_first_step=True, dataloader_num_workers=0, **setting)
        return InOrder(model=model, args=args, train_dataset=Dataset.from_list(rows),
                       processing_class=tok, callbacks=[timer] if timer else [])

    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "trl": trl.__version__}
    if liger:
        import importlib.metadata
        versions["liger_kernel"] = importlib.metadata.version("liger_kernel")
    if spec.get("max_batch"):
        # b rows for a batch of b, as ours takes them: from 64 rows, a batch of 128 would be 64
        return {"max_batch": largest_batch(lambda b: trainer(b, 1, rows=(rows * b)[:b]).train()),
                "versions": versions}
    timer = Timer()
    t = trainer(spec["batch"], spec["warmup"] + spec["steps"], timer)
    t.train()
    # the first step's log (logging_first_step), before any update; a TRL that logs other names
    # (another version, Liger's path) leaves the columns empty rather than losing the row
    logged = t.state.log_history[0] if t.state.log_history else {}
    return {"times": timer.times[spec["warmup"]:], "versions": versions,
            "first": {k: logged[k] for k in ("logps/chosen", "logps/rejected") if k in logged},
            "compute": ("bfloat16" if t.args.bf16 else "float32")
                       + (", grad checkpointing" if t.args.gradient_checkpointing else "")
                       + (", liger" if liger else ""), **peak(dev)}


# -- shared by both children ------------------------------------------------------------------------
def in_file_order(Trainer, Config, setting):
    """TRL's Trainer, taking the rows in the file's order as ours does: the same pairs in every step
    on both sides (TRL's default draws them at random; the rows' lengths are alike, so the order does
    not change a step's work, only which rows make it). transformers 5 has a setting for it, added to
    the Config keywords `setting`; an older one (a GPU machine's image) has none, and the trainer's
    sampler is replaced instead. Standard library only at import: bench/trl_parity.py's TRL child,
    outside the repository, loads this file by its path."""
    if any(f.name == "train_sampling_strategy" for f in dataclasses.fields(Config)):
        setting["train_sampling_strategy"] = "sequential"
        return Trainer
    import torch

    class InOrder(Trainer):
        def _get_train_sampler(self, *args, **kwargs):
            return torch.utils.data.SequentialSampler(self.train_dataset)
    return InOrder


def peak(dev):
    import torch
    if dev == "cuda":
        return {"peak_mib": torch.cuda.max_memory_allocated() / 2**20}
    import resource
    return {"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}   # KiB on Linux


def largest_batch(step, limit=256):
    """The largest batch (1, 2, 4, ...) whose step runs without running out of GPU memory. What a
    try left is freed before the next: a finished TRL trainer leaves its model in reference cycles
    (forwards patched with methods bound to the model; seen with trl 1.16, ORPO in bf16 and DPO),
    which only the cycle collector frees; left for the next try, it would count against TRL's
    larger batch."""
    import gc
    import torch
    best, b = 0, 1
    while b <= limit:
        try:
            step(b)
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            gc.collect()
            torch.cuda.empty_cache()
        best, b = b, 2 * b
    return best


def child_main(argv):
    spec = json.loads(argv[1])
    out = ours_child(spec) if argv[0] == "--child" else trl_child(spec)
    print("RESULT " + json.dumps(out))


# -- the parent: one process per measurement, then the table -------------------------------------------
def run_child(cmd, cwd, env=None):
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (r.stderr or r.stdout).strip().splitlines()[-1:] or [f"exit {r.returncode}"]}


def peer_flags(ap):
    """--checkpoint and --trl_python: the real model and TRL's interpreter (bench/trl_parity.py too)."""
    ap.add_argument("--checkpoint", default=os.path.join(REPO, "checkpoints", "smollm2-135m"),
                    help="the converted SmolLM2-135M-Instruct (made from the GGUF if missing) "
                    "(default: checkpoints/smollm2-135m in the repository)")
    ap.add_argument("--trl_python", default=os.environ.get("TRL_PYTHON", "/work/venv-trl/bin/python"),
                    help="the interpreter of TRL's environment; '' = ours only "
                    "(default: $TRL_PYTHON, else /work/venv-trl/bin/python)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--preset", default="cpu", choices=tuple(PRESETS),
                    help="what to measure: 'cpu' = SmolLM2-135M-Instruct, 'tiny' = a random 0.1M model "
                    "(checks the harness), 'gpu_1p7b' = SmolLM2-1.7B's shape on CUDA "
                    "(default: %(default)s)")
    ap.add_argument("--methods", default="orpo,dpo", help="comma-separated, each at most once, from "
                    f"{','.join(METHODS)} (the methods TRL has a trainer of); another is an error "
                    "(default: %(default)s)")
    ap.add_argument("--steps", type=int, help="timed steps per measurement (default: the preset's)")
    ap.add_argument("--warmup", type=int, help="untimed steps first, at least 1: the first step pays "
                    "one-time setup (allocations, kernel compiles), and ours' step-1 log-probs run a "
                    "forward before it (default: the preset's)")
    ap.add_argument("--device", help="cpu or cuda (default: the preset's: cuda for gpu_1p7b, else cpu)")
    ap.add_argument("--layers", type=int, help="fewer layers than the preset's model (a rehearsal), at "
                    "least 1, for the random-weight presets tiny and gpu_1p7b; cpu's real checkpoint keeps "
                    "its own, so --layers with --preset cpu is an error (default: the preset's)")
    ap.add_argument("--max_length", type=int, help="another max_length; the rows scale with it "
                    "(default: the preset's)")
    ap.add_argument("--batch", type=int, help="pairs per step (default: the preset's)")
    ap.add_argument("--threads", type=int, help="CPU threads of each side (OMP_NUM_THREADS; default: "
                    "torch's, one per core). On a machine shared with other work, 1 keeps a side's "
                    "threads from spinning while its partner is descheduled")
    peer_flags(ap)
    ap.add_argument("--largest_batch", default="with", choices=("with", "skip", "only"),
                    help="the search for the largest batch that fits at the preset's long max_length "
                    "(gpu_1p7b's: 2048; CUDA only), after the timed rows: 'with' them, 'skip' it, or "
                    "'only' it (default: %(default)s)")
    a = ap.parse_args()
    names = a.methods.split(",")
    if bad := [m for m in names if m not in METHODS]:
        ap.error(f"--methods {','.join(map(repr, bad))}: unknown; choose from {', '.join(METHODS)}")
    if twice := sorted({m for m in names if names.count(m) > 1}):   # timed twice, two rows in the table
        ap.error(f"--methods {','.join(map(repr, twice))}: named more than once")
    p = dict(PRESETS[a.preset])
    p.update({k: v for k, v in dict(steps=a.steps, warmup=a.warmup, device=a.device, batch=a.batch).items()
              if v is not None})
    if a.max_length:    # rows of the same share of max_length: prompt ~1/5, responses ~1/4 each
        p.update(prompt=max(1, p["prompt"] * a.max_length // p["max_length"]),
                 response=max(1, p["response"] * a.max_length // p["max_length"]), max_length=a.max_length)
    if p["warmup"] < 1:      # ours' first_logps forward would have warmed ours alone
        ap.error(f"--warmup {p['warmup']}: at least 1 (the first step pays one-time setup)")
    if a.layers is not None and a.layers < 1:       # model_dir's `layers or 24` would build them all
        ap.error(f"--layers {a.layers}: at least 1")
    if a.layers is not None and p["model"] == "smollm2-135m":   # model_dir would load all of it
        ap.error(f"--layers: --preset {a.preset} times the real SmolLM2-135M-Instruct checkpoint, which "
                 f"keeps its own layers; drop --layers, or rehearse with --preset tiny or gpu_1p7b")
    if p["device"] == "cpu":
        p.pop("max_batch_length", None)         # "the largest batch that fits" is a GPU question
    if a.largest_batch == "only" and not p.get("max_batch_length"):
        ap.error(f"--largest_batch only: the preset '{a.preset}' on {p['device']} has no search "
                 f"(--preset gpu_1p7b on CUDA has)")
    work = tempfile.mkdtemp(prefix="train_speed_")
    trl_py = a.trl_python if a.trl_python and os.path.exists(a.trl_python) else None
    try:
        sys.path.insert(0, REPO)
        rows_path = os.path.join(work, "rows.jsonl")
        with open(rows_path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in make_rows(p["rows"], p["prompt"], p["response"]))
        spec = dict(model_dir=model_dir(p, work, a.checkpoint, a.layers), rows=rows_path, device=p["device"],
                    batch=p["batch"], max_length=p["max_length"], steps=p["steps"], warmup=p["warmup"])
        env = {**os.environ, **({"OMP_NUM_THREADS": str(a.threads)} if a.threads else {})}
        ours = [sys.executable, "-m", "bench.train_speed", "--child"]
        theirs = [trl_py, "-I", os.path.abspath(__file__), "--trl-child"]
        results, versions = [], {}
        signal.signal(signal.SIGTERM, cut_short)    # a time limit (gpu.sh's `timeout`) stops it
        cut = False
        try:
            measure(a, p, spec, work, env, ours, theirs if trl_py else None, results, versions)
        except CutShort:
            cut = True
        print(table(results, p, a))
        if versions:
            print("TRL's environment: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
        if cut:
            print("(cut short by SIGTERM: the rows above are the measurements finished before it)")
            sys.exit(128 + signal.SIGTERM)
    finally:
        shutil.rmtree(work, ignore_errors=True)


class CutShort(Exception):
    """SIGTERM arrived: the run stops and prints what it measured."""


def cut_short(signum, frame):
    # `timeout` sends SIGTERM twice, to the command and to its process group: the second must not
    # end the run before it has printed
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise CutShort


def measure(a, p, spec, work, env, ours, theirs, results, versions):
    """Each measurement in a child process, appended to results as it finishes: the timed rows of
    every method, then the largest-batch searches (the longest part: each try a child loading the
    model again), so that a time limit cuts the searches, not the last method's rows."""
    methods = a.methods.split(",")
    for method in methods if a.largest_batch != "only" else []:
        jobs = [("ours", s, ours, REPO) for s in p["ours"]]
        if theirs:
            jobs += [("TRL", s, theirs, work) for s in p["trl"]]
        for side, setting, cmd, cwd in jobs:
            r = run_child(cmd + [json.dumps({**spec, "method": method, "setting": setting})], cwd, env)
            versions.update(r.pop("versions", {}))
            results.append((method, side, setting, r))
            print(f"  {method} {side} {setting}: {summary(r)}", file=sys.stderr, flush=True)
    if not p.get("max_batch_length") or a.largest_batch == "skip":
        return
    long_rows = os.path.join(work, "long_rows.jsonl")
    with open(long_rows, "w") as f:
        n = p["max_batch_length"] // 2      # ~1000 prompt and ~1000 response tokens
        f.writelines(json.dumps(r) + "\n" for r in make_rows(64, n * 5 // 6, n * 5 // 6))
    for method in methods:
        mb = {**spec, "method": method, "rows": long_rows, "max_length": p["max_batch_length"],
              "max_batch": True}
        for side, setting, cmd, cwd in [("ours", p["ours"][0], ours, REPO)] + (
                [("TRL", s, theirs, work) for s in p["trl"]] if theirs else []):
            r = run_child(cmd + [json.dumps({**mb, "setting": setting})], cwd, env)
            versions.update(r.pop("versions", {}))
            results.append((method, side, setting, {"max_batch": r.get("max_batch"), **r}))
            print(f"  {method} {side} {setting}: largest batch at max_length {mb['max_length']}: "
                  f"{r.get('max_batch', json.dumps(r))}", file=sys.stderr, flush=True)


def summary(r):
    if "times" in r:
        return f"median {statistics.median(r['times']):.3f} s, peak {r['peak_mib']:.0f} MiB ({r['compute']})"
    return json.dumps(r)


def table(results, p, a):
    """One line per measurement; the ratios are TRL-default's over each (time and memory: >1 = ours
    is faster / smaller) for ours, and over TRL's own settings for TRL."""
    import torch
    mem = "peak RSS" if p["device"] == "cpu" else "peak alloc"
    names = [("--" + " --".join(f"{k} {str(v).lower()}" for k, v in s.items())
              if s else "train.py's defaults")
             if side == "ours" else f"{s}" for m, side, s, r in results]
    w = max([24] + [len(n) for n in names])                 # the columns fit their longest entry
    cw = max([34] + [len(r.get("compute", "")) for *_, r in results])
    lines = [f"{a.preset}: {p['model']}{f' ({a.layers} layers)' if a.layers else ''} on {p['device']}, "
             f"{p['rows']} rows, {p['batch']} pairs a step, max_length {p['max_length']}, median of "
             f"{p['steps']} steps after {p['warmup']}, {a.threads or torch.get_num_threads()} "
             f"thread(s) a side; torch {torch.__version__}",
             f"{'method':6s} {'side':4s} {'setting':{w}s} {'compute':{cw}s} {'step s':>8s} "
             f"{mem + ' MiB':>15s} {'TRL-default time / this':>24s} {'mem / this':>11s} "
             f"{'step-1 logps chosen':>19s} {'rejected':>11s}"]
    default = {m: r for m, side, s, r in results if side == "TRL" and s == "default" and "times" in r}
    for (m, side, s, r), name in zip(results, names):
        if "max_batch" in r and "times" not in r:     # a failed search says why (its child's error)
            found = r["max_batch"] if r["max_batch"] is not None else json.dumps(
                {k: v for k, v in r.items() if k != "max_batch"})
            lines.append(f"{m:6s} {side:4s} {name:{w}s} largest batch at max_length "
                         f"{p['max_batch_length']}: {found}")
            continue
        if "times" not in r:
            lines.append(f"{m:6s} {side:4s} {name:{w}s} {json.dumps(r)}")
            continue
        t, d = statistics.median(r["times"]), default.get(m)
        ratio = (f"{statistics.median(d['times']) / t:24.2f} {d['peak_mib'] / r['peak_mib']:11.2f}" if d
                 else f"{'':24s} {'':11s}")
        first = r.get("first") or {}
        logps = " ".join(f"{first[k]:{n}.4f}" if k in first else " " * n
                         for k, n in (("logps/chosen", 19), ("logps/rejected", 11)))
        lines.append(f"{m:6s} {side:4s} {name:{w}s} {r['compute']:{cw}s} {t:8.3f} {r['peak_mib']:15.0f} "
                     f"{ratio} {logps}")
    lines.append("step-1 logps: the first batch's log-probs before any update (TRL's logps/chosen and "
                 "logps/rejected: ORPO's per-token means, DPO's sums, a mean over the pairs); alike on "
                 "both sides, they say both train on the same tokens")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("--child", "--trl-child"):
        if sys.argv[1] == "--child":
            sys.path.insert(0, REPO)
        child_main(sys.argv[1:])
    else:
        main()
