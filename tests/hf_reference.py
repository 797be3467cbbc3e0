"""
transformers, the reference the model and tokenizer tests compare with, in its own interpreter.

Why a second interpreter: transformers (>= 5.25) imports Hugging Face's `kernels` package, and a
Python started at the repository root finds the project's top-level kernels/ first (README.md,
"Layout"). So transformers never shares a process with the project. `transformers_process()`
starts one child, `python -I tests/hf_reference.py` with a temporary working directory: -I keeps
the working directory, the script's directory and PYTHONPATH off its sys.path, so it cannot import
the repository at all. The child imports transformers once and answers requests until closed.

Requests and answers are JSON lines (the child's stdin and stdout); tensors cross as safetensors
files in the temporary directory, never pickle.

    with transformers_process() as hf:              # the tests: the session fixture `hf` (conftest.py)
        ref = hf.model("ckpt/")                     # AutoModelForCausalLM, float32
        hf.model("ckpt/", dtype="auto")             # or as transformers loads it by default
        ref.logits(ids)                             # (B, T, V)
        ref.generate(ids, mask, 32, pad_id)         # greedy, EOS ignored: (new ids (B, 32), seconds)
        ref.save_pretrained("out/")
        tok = hf.tokenizer("ckpt/")                 # AutoTokenizer (or a `tokenizers.Tokenizer`)
        tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
"""
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

import torch
from safetensors.torch import load_file, save_file


class Missing(Exception):
    """transformers is not installed beside this Python."""


# -- the parent: what the tests and bench/decode_speed.py call -------------------------------------
@contextlib.contextmanager
def transformers_process(threads=0):
    """A started child (raises Missing without transformers); closed on exit."""
    hf = Reference(threads)
    try:
        yield hf
    finally:
        hf.close()


class Reference:
    def __init__(self, threads=0):
        self.dir, self.n = tempfile.mkdtemp(prefix="hf_reference-"), 0
        self.log = open(os.path.join(self.dir, "stderr.log"), "w+")   # a file: a full pipe would block
        self.proc = subprocess.Popen(
            [sys.executable, "-I", os.path.abspath(__file__), str(threads)], cwd=self.dir,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},                 # local directories only
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        hello = self._answer("start")
        if "missing" in hello:
            self.close()
            raise Missing(hello["missing"])
        self.version = hello["transformers"]

    def model(self, path, dtype="float32", device="cpu"):
        """dtype: 'float32' (the tests' reference), 'bfloat16', or 'auto' (from_pretrained's
        default in transformers 5: the dtype config.json names); device: where it runs."""
        return RefModel(self, os.path.abspath(path), dtype, device)   # absolute: the child works elsewhere

    def tokenizer(self, source, chat_template=None, special_tokens=None):
        """`source`: a checkpoint directory (AutoTokenizer), or a `tokenizers.Tokenizer` wrapped as
        PreTrainedTokenizerFast with these special tokens and this template."""
        if isinstance(source, (str, os.PathLike)):
            spec = {"dir": os.path.abspath(source)}
        else:
            text = source.to_str()
            spec = {"file": os.path.join(self.dir, hashlib.sha1(text.encode()).hexdigest()[:16] + ".json"),
                    "special_tokens": special_tokens or {}, "chat_template": chat_template}
            if not os.path.exists(spec["file"]):     # named by its content: written once
                with open(spec["file"], "w", encoding="utf-8") as f:
                    f.write(text)
        return RefTokenizer(self, spec)

    def ask(self, op, tensors=None, **req):
        """One request; returns (the answer, its tensors)."""
        self.n += 1
        req["out"] = os.path.join(self.dir, f"out{self.n}.safetensors")
        if tensors:
            req["inputs"] = os.path.join(self.dir, f"in{self.n}.safetensors")
            save_file({k: v.contiguous() for k, v in tensors.items()}, req["inputs"])
        self.proc.stdin.write(json.dumps({"op": op, **req}) + "\n")
        self.proc.stdin.flush()
        answer = self._answer(op)
        out = load_file(req["out"]) if os.path.exists(req["out"]) else {}
        for f in (req["out"], req.get("inputs")):
            if f and os.path.exists(f):
                os.remove(f)
        return answer, out

    def _answer(self, op):
        line = self.proc.stdout.readline()
        if not line:                        # the child died: its stderr says why
            self.log.seek(0)
            raise RuntimeError(f"transformers reference process ended during '{op}':\n"
                               + self.log.read()[-4000:])
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"transformers reference, '{op}':\n{answer['error']}")
        return answer

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()             # the child's loop ends, and so does the child
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class RefModel:
    def __init__(self, hf, path, dtype, device):
        self.hf, self.path, self.where = hf, path, dict(dtype=dtype, device=device)

    def logits(self, ids):
        return self.hf.ask("logits", {"ids": ids}, dir=self.path, **self.where)[1]["logits"]

    def generate(self, ids, attention_mask, max_new_tokens, pad_id):
        """Greedy, exactly max_new_tokens (EOS ignored); (the new ids, seconds generate() took)."""
        a, t = self.hf.ask("generate", {"ids": ids, "mask": attention_mask}, dir=self.path,
                           max_new_tokens=max_new_tokens, pad_id=pad_id, **self.where)
        return t["new"], a["seconds"]

    def save_pretrained(self, dst):
        self.hf.ask("save_pretrained", dir=self.path, dst=os.path.abspath(dst), **self.where)


class RefTokenizer:
    def __init__(self, hf, spec):
        self.hf, self.spec = hf, spec

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        """The rendered string, or with tokenize=True its ids (a list of ints)."""
        return self.hf.ask("chat", tokenizer=self.spec, messages=messages, tokenize=tokenize,
                           add_generation_prompt=add_generation_prompt)[0]["result"]


# -- the child: transformers, and nothing from the repository -----------------------------------------
def stamp(path):
    """What a cached object was read from, so that a rewritten file is read again."""
    files = sorted(os.path.join(path, n) for n in os.listdir(path)) if os.path.isdir(path) else [path]
    return [(f, os.stat(f).st_mtime_ns, os.stat(f).st_size) for f in files]


def serve(threads):
    proto = os.fdopen(os.dup(1), "w")   # the protocol's own stdout; anything else printed to
    os.dup2(2, 1)                       # stdout (a library's notice) goes to the stderr log

    def answer(**a):
        proto.write(json.dumps(a) + "\n")
        proto.flush()

    try:
        import transformers
    except ModuleNotFoundError as e:
        if e.name != "transformers":
            raise
        return answer(missing=f"transformers is not installed beside {sys.executable}")
    if threads:
        torch.set_num_threads(threads)
    cache = {}

    def cached(kind, spec, build):
        key = json.dumps([kind, spec, stamp(spec.get("dir") or spec["file"])], sort_keys=True)
        if key not in cache:
            if len(cache) >= 8:         # the least recently used goes: a session reads many
                del cache[next(iter(cache))]
            cache[key] = build()
        cache[key] = cache.pop(key)     # now the most recently used (dicts keep insertion order)
        return cache[key]

    def model(req):
        dtype = req["dtype"] if req["dtype"] == "auto" else getattr(torch, req["dtype"])
        return cached("model", {"dir": req["dir"], "dtype": req["dtype"], "device": req["device"]},
                      lambda: transformers.AutoModelForCausalLM.from_pretrained(req["dir"], dtype=dtype)
                      .to(req["device"]).eval())

    def tokenizer(spec):
        def build():
            if "dir" in spec:
                return transformers.AutoTokenizer.from_pretrained(spec["dir"])
            from tokenizers import Tokenizer
            tok = transformers.PreTrainedTokenizerFast(
                tokenizer_object=Tokenizer.from_file(spec["file"]), **spec["special_tokens"])
            tok.chat_template = spec["chat_template"]
            return tok
        return cached("tokenizer", spec, build)

    def logits(req):
        with torch.no_grad():
            out = model(req)(input_ids=load_file(req["inputs"])["ids"].to(req["device"])).logits
        save_file({"logits": out.float().contiguous()}, req["out"])
        return {}

    def generate(req):
        m, t = model(req), load_file(req["inputs"], device=req["device"])
        m.generation_config.eos_token_id = None        # exactly max_new_tokens, as ours is run
        t0 = time.perf_counter()
        with torch.no_grad():
            y = m.generate(input_ids=t["ids"], attention_mask=t["mask"], do_sample=False,
                           max_new_tokens=req["max_new_tokens"], pad_token_id=req["pad_id"])
        if y.is_cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        save_file({"new": y[:, t["ids"].shape[1]:].cpu().contiguous()}, req["out"])
        return {"seconds": seconds}

    def save_pretrained(req):
        model(req).save_pretrained(req["dst"])
        return {}

    def chat(req):
        out = tokenizer(req["tokenizer"]).apply_chat_template(
            req["messages"], tokenize=req["tokenize"], add_generation_prompt=req["add_generation_prompt"])
        if req["tokenize"]:             # a BatchEncoding in transformers 5, a list before
            out = list(out["input_ids"] if hasattr(out, "keys") else out)
        return {"result": out}

    def where(req):
        """Where this interpreter finds these modules (the isolation test asks)."""
        import importlib.util
        def place(spec):        # a module's file, a namespace package's folders, or None
            return spec and (spec.origin or list(spec.submodule_search_locations))
        return {"cwd": os.getcwd(), "sys_path": sys.path,
                "modules": {n: place(importlib.util.find_spec(n)) for n in req["modules"]}}

    ops = {f.__name__: f for f in (logits, generate, save_pretrained, chat, where)}
    answer(transformers=transformers.__version__)
    for line in sys.stdin:
        req = json.loads(line)
        try:
            answer(**ops[req["op"]](req))
        except Exception:
            answer(error=traceback.format_exc())


if __name__ == "__main__":
    serve(int(sys.argv[1]))
