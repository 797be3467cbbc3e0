"""
The documentation's citations must lead somewhere a reader of a fresh clone can follow.

1. Every repository path cited in README.md, docs/*.md, and the docstrings and comments of the
   repository's .py files exists: `nanoalign/osp.py`, `tests/fixtures/pref.jsonl`, `model/`, a
   bare `train.py`, a module run as `python -m experiments.compare`, and an anchor such as
   `docs/methods.md#osp`, which must be a heading of that file (GitHub's slug rules) or an
   explicit `<a id="...">`. Markdown link targets resolve relative to the file that holds them,
   every other path relative to the repository root. Run outputs (out/, checkpoints/, logs/),
   ../shared and placeholder paths (path/to/...) are not checked.
2. No file outside docs/ cites the project's private notes or its copies of the papers, which are
   not in the repository: the reference is docs/methods.md, and papers are cited by title.
3. Every command line of the repository (train.py, sample.py, each `python -m` tool) explains every
   flag in its --help and shows each default there, and every command that README.md and docs/*.md
   write for them (in a code block, or inline in backticks) names flags that exist, with values from
   their choices: `python train.py --method osp --osp_k 7` passes, `--osp_K 7` fails; so does
   `--method NAME --osp_K 7`, where NAME stands for any one method and `--osp_k 7` passes.
4. Every argparse parser that a module of the repository builds refuses a prefix of a flag
   (allow_abbrev=False): found by reading the sources, so a command line added later is checked too.

The checks are pure functions of a text, so the tests also show that they fail on a made-up
citation.
"""
import argparse
import ast
import contextlib
import dataclasses
import importlib.util
import io
import os
import re
import runpy
import shlex
import sys
import tokenize
import warnings

import pytest
from hypothesis import Phase, settings

from tests.helpers import ROOT


pytestmark = pytest.mark.usefixtures("single_thread")


SKIP_DIRS = {".git", "out", "checkpoints", "logs", "__pycache__", ".pytest_cache", ".hypothesis",
             "node_modules", ".venv", "venv", "shared", "mutants",
             ".device", ".device-keep"}     # bench/device_pack.sh's and device_run.sh's, ignored by git
IGNORED_PREFIXES = ("out/", "checkpoints/", "logs/", "../shared", "path/to/", "shared/")
PLANNED_ROOTS = {"docs", "experiments", "bench"}     # cited before they exist: still checked
# Written in pieces so that this file does not cite them itself.
PRIVATE_NOTES = "METHODS" + ".md"
PAPER_FILES = ["mo-orpo-self-judgement", "self-judge-jsft", "online-self-preferring-osp",
               "meta-aligner"]


# -- finding the files ------------------------------------------------------------------------------
def repo_files(exts=None):
    """Relative paths of the working tree's files (not just git's: other work may be uncommitted)."""
    out = []
    for d, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(x for x in dirs if x not in SKIP_DIRS and not x.endswith(".egg-info"))
        for f in sorted(files):
            if exts is None or f.endswith(exts):
                out.append(os.path.relpath(os.path.join(d, f), ROOT).replace(os.sep, "/"))
    return out


def top_level():
    return set(os.listdir(ROOT)) - SKIP_DIRS


# -- extracting citations ---------------------------------------------------------------------------
_PATH = r"(?:\.\.?/)*[A-Za-z0-9_][A-Za-z0-9_.-]*(?:/[A-Za-z0-9_.*-]+)*/?(?:#[A-Za-z0-9_-]+)?"
PATH_RE = re.compile(r"(?<![\w./:@<{$-])(" + _PATH + r")")
LINK_RE = re.compile(r"\]\(([^)\s]+)\)")
MODULE_RE = re.compile(r"python3? -m ([A-Za-z_][\w.]*)")


def _candidate(tok, roots):
    """The token as a path to check, or None if it is not a repository path."""
    tok = tok.rstrip(".,;:")
    path = tok.split("#")[0]
    if not path or path.startswith(IGNORED_PREFIXES) or "*" in path or "<" in path:
        return None
    if "/" in path:
        first = path.lstrip("./").split("/")[0] if not path.startswith("..") else ".."
        if first == ".." or first not in roots | PLANNED_ROOTS:
            return None
        return tok
    if re.fullmatch(r"[A-Za-z0-9_][\w-]*\.(py|md)", path):   # a bare file name: train.py, README.md
        return tok
    return None


def citations(text, roots):
    """[(line_no, token, kind)] in a text; kind 'path' (repo-relative), 'link' (relative to the
    file) or 'module' (python -m)."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        for m in LINK_RE.finditer(line):
            t = m.group(1)
            if not re.match(r"[a-z]+:", t):                   # not http:, mailto:, ...
                out.append((n, t, "link"))
        stripped = LINK_RE.sub("]", line)
        if re.search(r"https?://", stripped):
            stripped = re.sub(r"https?://\S+", " ", stripped)
        for m in PATH_RE.finditer(stripped):
            c = _candidate(m.group(1), roots)
            if c:
                out.append((n, c, "path"))
        for m in MODULE_RE.finditer(line):
            if m.group(1).split(".")[0] in roots | PLANNED_ROOTS:
                out.append((n, m.group(1), "module"))
    return out


def slug(heading):
    """GitHub's anchor for a markdown heading."""
    h = re.sub(r"[`*_]", "", heading.strip()).lower()
    h = re.sub(r"[^\w\- ]", "", h)
    return h.replace(" ", "-")


def anchors(md_text):
    seen, out = {}, set()
    in_code = False
    for line in md_text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        m = re.match(r"#{1,6} (.+)", line)
        if m and not in_code:
            s = slug(m.group(1))
            k = seen.get(s, 0)
            out.add(s if k == 0 else f"{s}-{k}")
            seen[s] = k + 1
    out |= set(re.findall(r"<a (?:id|name)=\"([^\"]+)\"", md_text))
    return out


_BASENAMES = None


def _basenames():
    global _BASENAMES
    if _BASENAMES is None:
        _BASENAMES = {os.path.basename(p) for p in repo_files((".py", ".md"))}
    return _BASENAMES


def problem(token, kind, here, root=ROOT):
    """Why a citation in file `here` (repo-relative) is broken, or None."""
    if kind == "module":
        rel = token.replace(".", "/")
        ok = os.path.isfile(os.path.join(root, rel + ".py")) or \
            os.path.isfile(os.path.join(root, rel, "__init__.py"))
        return None if ok else f"no module {token} (no {rel}.py)"
    path, _, anchor = token.partition("#")
    if kind == "link":
        if not path:
            target = here
        else:
            target = os.path.normpath(os.path.join(os.path.dirname(here), path)).replace(os.sep, "/")
            if target.startswith("../shared") or target.startswith(("out/", "checkpoints/")):
                return None
            if target.startswith(".."):
                return f"{token}: points outside the repository"
    else:
        if "/" not in path:                                     # bare file name, e.g. data.py
            if path not in _basenames():
                return f"{token}: no file of that name in the repo"
            if not anchor:
                return None
            near = os.path.join(os.path.dirname(here), path)      # a bare name beside `here`
            path = near if os.path.exists(os.path.join(root, near)) else path
        target = os.path.normpath(path).replace(os.sep, "/")
    full = os.path.join(root, target)
    if not os.path.exists(full) and kind == "path" and "." in target.rsplit("/", 1)[-1]:
        module, _, attr = target.partition(".")             # tests/helpers.judge_by_rule
        if os.path.isfile(os.path.join(root, module + ".py")):
            src = open(os.path.join(root, module + ".py"), encoding="utf-8").read()
            name = attr.split(".")[0]
            if re.search(rf"^\s*(?:def|class) {re.escape(name)}\b|^{re.escape(name)}\s*[:=]", src, re.M):
                return None
            return f"{token}: {module}.py defines no {name}"
    if not os.path.exists(full):
        return f"{token}: {target} does not exist"
    if anchor:
        if not target.endswith(".md"):
            return f"{token}: an anchor on a file that is not markdown"
        if anchor not in anchors(open(full, encoding="utf-8").read()):
            return f"{token}: {target} has no heading with anchor #{anchor}"
    return None


# -- the texts to check -----------------------------------------------------------------------------
def py_doc_lines(src):
    """{line_no: text} of a Python file's docstrings and comments."""
    lines = src.splitlines()
    out = {}
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return out
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                for n in range(body[0].lineno, body[0].end_lineno + 1):
                    out[n] = lines[n - 1]
    try:
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type == tokenize.COMMENT:
                out[tok.start[0]] = out.get(tok.start[0], "") + " " + tok.string
    except (tokenize.TokenError, IndentationError):
        pass
    return out


def documents():
    """(repo-relative file, {line_no: text}) for README.md, docs/*.md and every .py file."""
    docs = []
    for rel in repo_files((".md", ".py")):
        text = open(os.path.join(ROOT, rel), encoding="utf-8").read()
        if rel.endswith(".md"):
            if rel == "README.md" or re.fullmatch(r"docs/[^/]+\.md", rel):
                docs.append((rel, dict(enumerate(text.splitlines(), 1))))
        else:
            docs.append((rel, py_doc_lines(text)))
    return docs


def broken_citations():
    roots, bad = top_level(), []
    for rel, lines in documents():
        for n, line in sorted(lines.items()):
            for _, tok, kind in citations(line, roots):
                why = problem(tok, kind, rel)
                if why:
                    bad.append(f"{rel}:{n}: {why}")
    return bad


def private_citations(text):
    pats = [re.escape(PRIVATE_NOTES), r"papers/[\w.*-]+(?:\.txt)?"] + \
        [re.escape(p) + r"\.txt" for p in PAPER_FILES]
    return [(n, m.group(0)) for n, line in enumerate(text.splitlines(), 1)
            for m in re.finditer("|".join(pats), line)]


# -- tests ------------------------------------------------------------------------------------------
def test_every_cited_path_exists():
    bad = broken_citations()
    assert not bad, "broken citations:\n" + "\n".join(bad)


def test_no_file_outside_docs_cites_private_notes_or_paper_copies():
    bad = []
    for rel in repo_files():
        if rel.startswith("docs/"):
            continue
        try:
            text = open(os.path.join(ROOT, rel), encoding="utf-8").read()
        except (UnicodeDecodeError, OSError):
            continue
        bad += [f"{rel}:{n}: {hit}" for n, hit in private_citations(text)]
    assert not bad, ("cite docs/methods.md anchors or papers by title instead:\n" + "\n".join(bad))


# -- the checks can fail ----------------------------------------------------------------------------
@pytest.mark.parametrize("line, kind_expected", [
    ("see `nanoalign/no_such_method.py` for the loss", "path"),
    ("the math is in docs/methods.md#no-such-section", "path"),
    ("examples: `tests/fixtures/no_such_rows.jsonl`", "path"),
    ("run `python -m nanoalign.no_such_tool`", "module"),
    ("a bare no_such_file.py", "path"),
])
def test_a_made_up_citation_fails(line, kind_expected):
    found = citations(line, top_level())
    assert [k for _, _, k in found] == [kind_expected]
    assert problem(found[0][1], found[0][2], "README.md") is not None


def test_a_made_up_link_fails_and_a_real_one_passes():
    bad = citations("[x](methods.md#no-such-section) and [y](../nanoalign/none.py)", top_level())
    assert [problem(t, k, "docs/results.md") is not None for _, t, k in bad] == [True, True]
    good = citations("[x](methods.md#osp) [y](../nanoalign/osp.py) [z](#osp)", top_level())
    assert [problem(t, k, "docs/methods.md") for _, t, k in good] == [None, None, None]


def test_a_module_attribute_in_path_form_is_checked():
    assert problem("tests/helpers.py", "path", "README.md") is None
    assert problem("nanoalign/osp.spce_loss", "path", "README.md") is None
    assert problem("nanoalign/osp.no_such_function", "path", "README.md") is not None


def test_real_citations_and_ignored_paths_pass():
    text = ("`nanoalign/osp.py`, `docs/methods.md#osp`, `tests/fixtures/pref.jsonl`, `model/model.py`,"
            " `model/`, train.py, `python -m bench.kernels`; ignored: out/jsft/ckpt,"
            " checkpoints/smollm2-135m, path/to/hf_llama_dir, ../shared/x, mistral-7b/, w1/w2,"
            " https://github.com/x/y.py")
    found = citations(text, top_level())
    assert {t for _, t, _ in found} == {"nanoalign/osp.py", "docs/methods.md#osp",
                                        "tests/fixtures/pref.jsonl", "model/model.py", "model/",
                                        "train.py", "bench.kernels"}
    assert [problem(t, k, "README.md") for _, t, k in found] == [None] * len(found)


def test_slugs_follow_github():
    assert slug("Sequence log-probabilities") == "sequence-log-probabilities"
    assert slug("DPO and IPO") == "dpo-and-ipo"
    assert slug("Epoch-by-epoch and task-by-task") == "epoch-by-epoch-and-task-by-task"
    assert slug("`osp` (eq. 7)") == "osp-eq-7"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


def test_private_citations_are_found():
    assert private_citations("see " + PRIVATE_NOTES + " 'ORPO'") == [(1, PRIVATE_NOTES)]
    assert private_citations("(" + PAPER_FILES[2] + ".txt, eq. 7)") == [(1, PAPER_FILES[2] + ".txt")]
    assert private_citations("the METHODS list of a module") == []


def test_every_equation_of_the_methods_names_its_code_and_its_test():
    """docs/methods.md: a section that states a formula (a line of inline math with '=' or a loss
    'L_...') ends with 'In code: ... Tested by: ...', citing at least one function and one test;
    test_every_cited_path_exists checks that each named function and test exists."""
    text = open(os.path.join(ROOT, "docs", "methods.md"), encoding="utf-8").read()
    sections = re.split(r"\n(?=#{2,3} )", text)
    missing = []
    for sec in sections[1:]:
        title = sec.splitlines()[0]
        formula = re.search(r"^`[^`]*(=|L_)[^`]*`\s*$", sec, re.M)
        link = re.search(r"^In code: (.*)\. Tested by: (.*)\.$", sec, re.M)
        if formula and not (link and "`tests/" in link.group(2) and "`" in link.group(1)):
            missing.append(title)
    assert not missing, f"sections with a formula but no 'In code: ... Tested by: ...': {missing}"


# -- the command lines ------------------------------------------------------------------------------
# Every program with an argparse command line, as run from the repository root, and the source file
# that builds its parser (train.py's is nanoalign/cli.py's). A new one must join this table.
CLIS = {"train.py": "nanoalign/cli.py", "sample.py": "sample.py",
        "experiments.compare": "experiments/compare.py", "experiments.plot": "experiments/plot.py",
        "bench.kernels": "bench/kernels.py", "bench.decode_speed": "bench/decode_speed.py",
        "bench.train_speed": "bench/train_speed.py", "bench.trl_parity": "bench/trl_parity.py",
        "nanoalign.judge_cli": "nanoalign/judge_cli.py",
        "nanoalign.tasks.instruct": "nanoalign/tasks/instruct/cli.py",
        "nanoalign.tasks.evaluate": "nanoalign/tasks/evaluate.py",
        "model.gguf_import": "model/gguf_import.py", "model.lora": "model/lora.py"}


class _Parser(BaseException):
    """Raised in place of parsing: carries the parser a command line built. A BaseException, so that
    a program's own `except Exception` cannot catch it and go on to run for real."""


@contextlib.contextmanager
def _argv(argv):
    old = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = old


def cli_parser(prog, args=()):
    """The argparse parser that `python prog args` (or `python -m prog args`) parses its arguments
    with, built as the program builds it and caught before it parses: nothing runs."""
    real = argparse.ArgumentParser.parse_args

    def caught(self, *a, **k):
        raise _Parser(self)
    argparse.ArgumentParser.parse_args = caught
    try:
        with _argv([prog] + list(args)), warnings.catch_warnings():
            warnings.simplefilter("ignore")             # runpy: "found in sys.modules ..."
            if prog.endswith(".py"):
                runpy.run_path(os.path.join(ROOT, prog), run_name="__main__")
            else:
                runpy.run_module(prog, run_name="__main__")
    except _Parser as e:
        return e.args[0]
    finally:
        argparse.ArgumentParser.parse_args = real
    raise AssertionError(f"{prog} {' '.join(args)} parsed no arguments")


def unexplained_flags(parser):
    """What --help leaves out: a flag (or positional argument) without a help text, or with a
    default that its help does not show ('default' and the value, an absolute path excepted)."""
    fmt, bad = parser._get_formatter(), []
    for a in parser._actions:
        if isinstance(a, argparse._HelpAction) or a.help == argparse.SUPPRESS:
            continue
        name = "/".join(a.option_strings) or a.dest
        text = fmt._expand_help(a) if a.help else ""
        if len(text.split()) < 2:
            bad.append(f"{name}: no help text")
            continue
        d = a.default
        if not a.option_strings or a.required or d in (None, False, argparse.SUPPRESS, []):
            continue
        if "default" not in text.lower():
            bad.append(f"{name}: its help does not show its default {d!r}")
        elif isinstance(d, (int, float, str)) and not os.path.isabs(str(d)) and str(d) not in text:
            bad.append(f"{name}: its help does not show its default {d!r}: {text!r}")
    return bad


def _cli_cases():
    from nanoalign import REGISTRY
    from nanoalign.tasks import TASKS
    from experiments.compare import PRESETS
    return ([("train.py", ["--method", m]) for m in REGISTRY] +
            [("train.py", ["--task", t]) for t in TASKS] +
            [("sample.py", []), ("experiments.plot", ["run"]), ("bench.kernels", []),
             ("bench.decode_speed", []), ("bench.train_speed", []), ("bench.trl_parity", []),
             ("nanoalign.judge_cli", []),
             ("nanoalign.tasks.instruct", ["examples"]), ("nanoalign.tasks.instruct", ["build"]),
             ("nanoalign.tasks.evaluate", []), ("model.gguf_import", []), ("model.lora", [])] +
            [("experiments.compare", ["--preset", p]) for p in PRESETS])


@pytest.mark.parametrize("prog, args", _cli_cases(), ids=lambda x: " ".join(x) if isinstance(x, list) else x)
def test_every_flag_of_every_command_line_is_explained_with_its_default(prog, args):
    bad = unexplained_flags(cli_parser(prog, args))
    assert not bad, f"python {prog} {' '.join(args)} --help:\n" + "\n".join(bad)


def test_every_command_line_is_checked():
    found = {rel for rel in repo_files((".py",)) if not rel.startswith("tests/")
             and builds_a_parser(open(os.path.join(ROOT, rel), encoding="utf-8").read())}
    assert found == set(CLIS.values()), "add the command line to CLIS and to _cli_cases"
    assert {p for p, _ in _cli_cases()} == set(CLIS)


def builds_a_parser(src):
    """Whether a Python source calls ArgumentParser(...), argparse's or nanoalign.suggest's (whose
    definition subclasses argparse's without calling it)."""
    return any(isinstance(n, ast.Call) and "ArgumentParser" in (getattr(n.func, "attr", None),
                                                                getattr(n.func, "id", None))
               for n in ast.walk(ast.parse(src)))


def abbreviating_parsers(src):
    """[(line_no, call)] of the argparse parsers a Python source builds without allow_abbrev=False:
    ArgumentParser(...) however it was imported, and a subcommand's add_parser(...), which builds a
    parser of its own (it does not inherit its parent's allow_abbrev)."""
    out = []
    for node in ast.walk(ast.parse(src)):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
        if name in ("ArgumentParser", "add_parser") and not any(
                k.arg == "allow_abbrev" and isinstance(k.value, ast.Constant) and k.value.value is False
                for k in node.keywords):
            out.append((node.lineno, name))
    return out


def test_every_parser_refuses_a_prefix_of_a_flag():
    """The project's rule: `--ou` is an error, not `--out` (nor, once a flag is added, the other flag
    it also starts). argparse takes prefixes unless a parser is built with allow_abbrev=False; only
    train.py, sample.py, experiments' tools and the judge's were. Every parser of every module is
    read from the sources, not from a list, so a command line added later is checked as well."""
    made_up = ("import argparse\nfrom argparse import ArgumentParser\n"
               "ap = argparse.ArgumentParser(description='x')\nok = ArgumentParser(allow_abbrev=False)\n"
               "sub = ok.add_subparsers().add_parser('a')\nno = ArgumentParser(allow_abbrev=True)\n")
    assert abbreviating_parsers(made_up) == [(3, "ArgumentParser"), (5, "add_parser"),
                                             (6, "ArgumentParser")]           # the scan can fail
    bad = [f"{rel}:{n}: {call}(...)" for rel in repo_files((".py",)) if not rel.startswith("tests/")
           for n, call in abbreviating_parsers(open(os.path.join(ROOT, rel), encoding="utf-8").read())]
    assert not bad, "parsers that take a prefix of a flag (build them with allow_abbrev=False):\n" + \
        "\n".join(bad)


def joined_docstring_lines(src):
    """Line numbers of a module docstring's lines that end in a lone backslash: in a string that is
    not raw, backslash-newline joins the next line on, so a `\\`-continued example command in a
    --help (argparse's description is the docstring) prints as one long line."""
    body = ast.parse(src).body
    if not (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)):
        return []
    text = ast.get_source_segment(src, body[0].value)
    if text[:1] in "rR":
        return []
    first = body[0].lineno
    return [first + i for i, line in enumerate(text.split("\n"))
            if re.search(r"(?<!\\)(\\\\)*\\$", line)]


def test_no_docstring_example_is_joined_onto_one_line():
    made_up = '"""usage:\n    python x.py --a 1 \\\n        --b 2\n    python x.py --c \\\\\n        --d\n"""\n'
    assert joined_docstring_lines(made_up) == [2]                       # the scan can fail
    bad = [f"{rel}:{n}" for rel in repo_files((".py",))
           for n in joined_docstring_lines(open(os.path.join(ROOT, rel), encoding="utf-8").read())]
    assert not bad, "docstring lines that end in one backslash (write \\\\):\n" + "\n".join(bad)


def test_an_unexplained_flag_or_default_is_found():
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", type=int, default=3)                            # no help
    ap.add_argument("--b", type=int, default=3, help="the b value")        # no default shown
    ap.add_argument("--c", default="x,y", help="c (default: y)")           # the wrong default
    ap.add_argument("--d", type=int, default=3, help="the d (default: %(default)s)")
    ap.add_argument("--e", action="store_true", help="turns e on")
    ap.add_argument("--f", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    assert [b.split(":")[0] for b in unexplained_flags(ap)] == ["--a", "--b", "--c"]


# a word in single quotes, 'auto' or '', not the apostrophe of "TRL's" or "the papers' rules"
QUOTED_RE = re.compile(r"(?<![\w'])'([^'\s]*)'(?![\w'])")


def choice_problems(flag, text, choices):
    """What an option's help says wrong about its choices: a choice it does not name in quotes (so
    not what it means), or a word in quotes that is no choice (one renamed or removed)."""
    quoted = set(QUOTED_RE.findall(text))
    return ([f"--{flag}: its help does not name the choice '{c}'" for c in choices if c not in quoted] +
            [f"--{flag}: its help names '{q}', which is not a choice" for q in sorted(quoted - set(choices))])


def test_every_choice_of_a_train_py_option_is_named_in_its_help_and_no_other():
    """train.py's --help ends each option with 'one of ...', its choices, but says what each one means
    only where its help names it: every option of every method and task names each of its choices in
    quotes, and nothing else in quotes. --dtype said nothing of 'float32', --packed of 'true' and
    'false', --chat_format of its formats, --model_preset of its presets, --judge_template of
    'compact_principle' and 'compact_rationale'."""
    from nanoalign import REGISTRY
    from nanoalign.config import config_class
    from nanoalign.tasks import TASKS
    fields = {f.name: f for m in REGISTRY for t in TASKS for f in dataclasses.fields(config_class(m, t))}
    bad = [p for f in fields.values() if f.metadata.get("choices")
           for p in choice_problems(f.name, f.metadata["help"], f.metadata["choices"])]
    assert not bad, "\n".join(sorted(bad))


def test_a_choice_left_unnamed_or_a_quoted_word_that_is_no_choice_is_found():
    text = "'a' = on, 'b' = off ('c' was renamed 'b'); TRL's default, the papers' rules, '' = none"
    assert choice_problems("x", text, ("a", "b", "d", "")) == [
        "--x: its help does not name the choice 'd'", "--x: its help names 'c', which is not a choice"]
    assert choice_problems("x", text, ("a", "b", "c", "")) == []


def doc_commands(text):
    """[(line_no, text)] of a markdown text's commands: each line of a code block, joined with its
    `\\` continuations, and each inline code span (across line breaks)."""
    out, lines, in_code, para, i = [], text.splitlines(), False, [], 0

    def spans():
        joined, starts, pos = "", [], 0
        for n, t in para:
            starts.append((pos, n))
            joined += t + " "
            pos += len(t) + 1
        for m in re.finditer(r"`([^`]+)`", joined):
            out.append((max(s for s in starts if s[0] <= m.start())[1], m.group(1)))
        para.clear()
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            spans()
            in_code = not in_code
        elif in_code:
            start = i
            while line.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i].strip()
            out.append((start + 1, line))
        elif line.strip():
            para.append((i + 1, line))
        else:
            spans()
        i += 1
    spans()
    return out


def invocations(command):
    """[(program, args)] that a shell command runs: train.py, sample.py, and the repository's
    modules under `python -m` (pytest, venv, ... are not the repository's); a `# comment` is cut,
    a `<placeholder>` becomes one word."""
    try:
        words = shlex.split(re.sub(r"<[^>]*>", "PLACEHOLDER", command.split(" #")[0]))
    except ValueError:
        return []
    out, seg = [], []
    for w in words + ["&&"]:
        if w not in ("&&", "||", ";", "|"):
            seg.append(w)
            continue
        for k, x in enumerate(seg):
            rest = seg[k + 1:]
            if x == "torchrun":
                j = next((j for j, y in enumerate(rest) if y.endswith(".py")), None)
                if j is not None:
                    out.append((rest[j], rest[j + 1:]))
                break
            if re.fullmatch(r"python3?", x):
                if rest[:1] == ["-m"] and len(rest) > 1 and rest[1] in CLIS:
                    out.append((rest[1], rest[2:]))
                elif rest[:1] and rest[0] in CLIS:
                    out.append((rest[0], rest[1:]))
                break
        seg = []
    return out


def _placeholder(value):
    return bool(re.fullmatch(r"[A-Z][A-Z0-9_]*|\.\.\.", value))


PICKERS = ("--method", "--task", "--preset")      # the flags that decide which options the others are


def stand_ins(prog, picker, lead):
    """What a placeholder after a picker stands for (`--method NAME`: any method): the picker's
    argparse choices, or train.py's methods and tasks (which it checks after parsing)."""
    if prog == "train.py":
        from nanoalign import REGISTRY
        from nanoalign.tasks import TASKS
        return sorted({"--method": REGISTRY, "--task": TASKS}.get(picker, ()))
    act = cli_parser(prog, lead)._option_string_actions.get(picker)
    return sorted(act.choices or ()) if act else []


def command_problems(prog, args):
    """Why `prog args` would not parse: a flag it does not have, or a value not among the flag's
    choices (placeholders such as NAME, DIR and `...` stand for any value; `a|b` is each of a, b;
    `--method NAME` for any one method: the command passes if it parses with one of them)."""
    args = [a.strip("[]") for a in args]
    lead = []                        # a subcommand (instruct's build), positional arguments
    for a in args:
        if a.startswith("-"):
            break
        lead.append(a)
    for k, a in enumerate(args[:-1]):
        values = stand_ins(prog, a, lead) if a in PICKERS and _placeholder(args[k + 1]) else []
        if values:                   # the fewest problems of any method (task, preset) it may be
            return min((command_problems(prog, args[:k + 1] + [v] + args[k + 2:]) for v in values), key=len)
    picks = [x for k, a in enumerate(args[:-1]) if a in PICKERS and not _placeholder(args[k + 1])
             for x in (a, args[k + 1])]
    try:
        parser = cli_parser(prog, lead + picks)
    except SystemExit:              # argparse said why on stderr
        return [f"{' '.join(lead + picks)}: refused"]
    options, bad, k = parser._option_string_actions, [], 0
    choices = {name: act.choices for name, act in options.items()}
    if prog == "train.py":           # its choices are checked after parsing, from the options' fields
        from nanoalign.config import SharedConfig, config_class
        picked = dict(zip(picks[::2], picks[1::2]))
        fields = config_class(picked.get("--method", SharedConfig.method),
                              picked.get("--task", SharedConfig.task))
        choices.update({f"--{f.name}": f.metadata.get("choices") for f in dataclasses.fields(fields)})
    while k < len(args):
        a, k = args[k], k + 1
        if a == "--":
            break
        if not a.startswith("-") or _placeholder(a):
            continue
        name, eq, value = a.partition("=")
        act = options.get(name)
        if act is None:
            bad.append(f"{name}: no such flag")
            continue
        if act.nargs == 0:
            continue
        if not eq:
            if k < len(args) and not args[k].startswith("--"):
                value, k = args[k], k + 1
            else:
                if act.nargs != "?":
                    bad.append(f"{name}: needs a value")
                continue
        if choices[name] and not _placeholder(value):
            bad += [f"{name} {v}: not one of {sorted(choices[name])}" for v in value.split("|")
                    if v not in choices[name]]
    return bad


def test_every_command_in_the_docs_parses():
    bad = []
    for rel in ["README.md"] + sorted(f"docs/{f}" for f in os.listdir(os.path.join(ROOT, "docs"))
                                      if f.endswith(".md")):
        for n, command in doc_commands(open(os.path.join(ROOT, rel), encoding="utf-8").read()):
            for prog, args in invocations(command):
                bad += [f"{rel}:{n}: {prog}: {why}" for why in command_problems(prog, args)]
    assert not bad, "commands in the docs that would not parse:\n" + "\n".join(bad)


def test_a_made_up_command_fails_and_a_real_one_passes():
    text = ("Run `python train.py --method osp --osp_K 7` and\n`python -m experiments.compare --preset\n"
            "no_such --seeds 1`:\n\n```\npython sample.py --init_from DIR \\\n    --best_of 4 --judge_temp x\n"
            "torchrun --nproc_per_node N train.py ... [--parallel ddp|gloo]\n```\n")
    found = [(n, prog, command_problems(prog, args)) for n, c in doc_commands(text)
             for prog, args in invocations(c)]
    assert found == [(1, "train.py", ["--osp_K: no such flag"]),
                     (2, "experiments.compare", ["--preset no_such: refused"]),
                     (6, "sample.py", ["--judge_temp: no such flag"]),
                     (8, "train.py", ["--parallel gloo: not one of ['ddp', 'fsdp']"])]
    real = ("`python train.py --method osp --osp_k 7 --init_from DIR && python sample.py --prompt x` "
            "`PYTHON=x bash bench/gpu.sh` `python -m pytest -q` `python train.py --method NAME --help`")
    assert [command_problems(p, a) for _, c in doc_commands(real) for p, a in invocations(c)] == [[]] * 3


def _problems(text):
    return [command_problems(p, a) for _, c in doc_commands(text) for p, a in invocations(c)]


def test_a_placeholder_picker_takes_the_flags_of_what_it_stands_for_and_no_made_up_one():
    """`--method NAME` stands for any method (`--task NAME`, `--preset NAME` alike): a flag of some
    method, with a value among its choices, passes. It failed as 'no such flag': the checker built
    the parser without any method, so only the shared flags existed. A flag no method has, a value
    no method takes, and flags of two methods in one command still fail."""
    good = ("`python train.py --method NAME --osp_k 7 --pairing raft` "
            "`python train.py --method <name> --judge_template principle --lr 1e-5` "
            "`python train.py --task NAME --task_data DIR` "
            "`python -m experiments.compare --preset NAME --seeds 1,2,3`")
    assert _problems(good) == [[]] * 4
    bad = ("`python train.py --method NAME --osp_K 7` `python train.py --method NAME --pairing best` "
           "`python train.py --method NAME --osp_k 7 --jsft_judge false` "
           "`python train.py --task NAME --no_such_option 3` "
           "`python -m experiments.compare --preset NAME --seeds 1 --no_such 2`")
    found = _problems(bad)
    assert found[0] == ["--osp_K: no such flag"] and found[3] == ["--no_such_option: no such flag"]
    assert found[4] == ["--no_such: no such flag"]
    assert all(len(f) == 1 for f in found), found       # one flag or value wrong in each


# -- the README's example of property-testing your own loss ----------------------------------------
README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def test_readme_property_test_example_runs_and_can_fail(tmp_path):
    section = open(README).read().split("\n## Property-test your own loss\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1 and len(blocks[0].splitlines()) < 30
    path = tmp_path / "readme_example.py"                  # a real file: Hypothesis reads the source
    path.write_text(blocks[0])
    spec = importlib.util.spec_from_file_location("readme_example", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    tests = [getattr(mod, name) for name in dir(mod) if name.startswith("test_")]
    assert len(tests) == 3
    for t in tests:
        t()
    # the same properties catch the loss with chosen and rejected exchanged
    good = mod.hinge_loss
    mod.hinge_loss = lambda pw, pl, rw, rl, beta: good(pl, pw, rl, rw, beta)
    failed = 0
    for t in tests:
        try:        # no shrinking: a failure is all this needs
            settings(phases=[Phase.generate], database=None)(t)()
        except Exception:
            failed += 1
    assert failed >= 2
