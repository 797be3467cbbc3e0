"""The shape of the code: methods live in their own files (train.py names none), layers point down, no
import cycles, the library never imports transformers, git keeps run outputs out; the slips in a new
method's file (an option that shadows a shared one, a method file never imported) are said naming
it. (That a method registered anywhere, even in a test file, trains through train.py:
tests/train/test_loop.py.)"""
import ast
import dataclasses
import os
import re
import sys
from dataclasses import dataclass

import pytest

import train
from nanoalign import REGISTRY
from nanoalign.common import option
from nanoalign.data import KINDS
from tests.helpers import ROOT

LIBRARY = ("kernels", "model", "nanoalign")
# the library runs without them; transformers is only the tests' reference, in its own process
NOT_IN_LIBRARY = ("transformers", "trl", "accelerate", "peft", "datasets")


def test_no_method_is_named_in_train_py():
    src = open(os.path.join(ROOT, "train.py")).read()
    strings = {n.value for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Constant)
               and isinstance(n.value, str)}
    words = set(re.findall(r"[A-Za-z_]+", " ".join(strings)))
    named = sorted(set(REGISTRY) & (strings | words))
    assert not named, f"train.py names methods {named}; they belong in their own files"
    # nor a method's own option (one of several words, as 'jsft_judge': a plain word such as a
    # self_judge's --judge is also English), in a string or read off the config: the end of a run
    # once asked getattr(cfg, "jsft_judge", True) whether it had trained a judge
    from nanoalign.config import SHARED
    own = {f.name for m in REGISTRY.values() for f in dataclasses.fields(m.options)} - set(SHARED)
    attrs = {n.attr for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Attribute)}
    options = sorted(n for n in own & (strings | words | attrs) if "_" in n)
    assert not options, f"train.py reads methods' own options {options}; a Method field says it instead"


def test_every_method_declares_options_with_help():
    for name, m in REGISTRY.items():
        assert dataclasses.is_dataclass(m.options), name
        for f in dataclasses.fields(m.options):
            assert f.metadata.get("help"), f"{name}: option {f.name} has no help"
        assert m.eats in KINDS and m.reads in train.KINDS, name


# -- a new method's slips, said where it makes them ----------------------------------------------
@dataclass
class SharedNameOptions:
    max_length: int = option(64, "a shared option declared again")


def test_a_method_option_that_is_a_shared_one_is_refused_naming_both(toy_slip, capsys):
    toy_slip(options=SharedNameOptions)
    with pytest.raises(SystemExit) as e:
        train.parse_config(["--method", "toy_slip"])
    msg = str(e.value.code) + capsys.readouterr().err
    assert ("--method toy_slip: option 'max_length' of SharedNameOptions is a shared option "
            "(nanoalign/config.py SharedConfig), which every method has as it is: give the method's "
            "option a name of its own") in msg, msg


def test_a_method_file_not_imported_is_named_when_its_method_is_unknown(tmp_path, monkeypatch, capsys):
    """A method file written in nanoalign/ (simpo, say), its import in nanoalign/__init__.py forgotten:
    `--method simpo` was 'unknown; did you mean ipo?'."""
    from nanoalign import cli
    (tmp_path / "simpo.py").write_text("register(Method(name=\"simpo\"))\n")
    monkeypatch.setattr(cli, "METHODS_DIR", str(tmp_path))
    with pytest.raises(SystemExit):
        train.parse_config(["--method", "simpo"])
    err = capsys.readouterr().err
    assert "--method 'simpo' is unknown" in err and "nanoalign/simpo.py is there, but nanoalign/__init__.py " \
        "does not import it" in err, err
    (tmp_path / "data.py").write_text("")
    (tmp_path / "helpers.py").write_text("def f(): pass\n")
    (tmp_path / "__init__.py").write_text("register(...)\n")
    # no such file; a module that is imported; one that registers nothing; the package's own file
    for other in ("simpox", "data", "helpers", "__init__"):
        with pytest.raises(SystemExit):
            train.parse_config(["--method", other])
        err = capsys.readouterr().err
        assert "is unknown" in err and "does not import it" not in err, err


# -- imports ---------------------------------------------------------------------------------------
def repo_modules():
    """{module name: set of repo modules it imports (at any depth in the file)}."""
    files = {}
    for top in LIBRARY + ("experiments",):
        for dirpath, _, names in os.walk(os.path.join(ROOT, top)):
            for n in names:
                if n.endswith(".py"):
                    rel = os.path.relpath(os.path.join(dirpath, n), ROOT)[:-3].replace(os.sep, ".")
                    files[rel.removesuffix(".__init__")] = os.path.join(dirpath, n)
    for n in ("train", "sample"):
        files[n] = os.path.join(ROOT, n + ".py")
    graph = {}
    for mod, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(open(path).read())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            deps |= {n for n in names if n in files and n != mod}
        graph[mod] = deps
    return graph


def test_layers_point_down():
    graph = repo_modules()
    for mod, deps in graph.items():
        if mod.split(".")[0] in LIBRARY:
            up = {d for d in deps if d.split(".")[0] in ("experiments", "train", "sample")}
            assert not up, f"{mod} imports {up}: the library must not import experiments/ or train"
        if mod in ("train", "sample"):                 # experiments/ sits above the loop, never below
            up = {d for d in deps if d.split(".")[0] == "experiments"}
            assert not up, f"{mod} imports {up}: experiments/ may import the loop, not the reverse"
        if mod.split(".")[0] == "kernels":
            assert all(d.split(".")[0] == "kernels" for d in deps), f"{mod} imports {deps}"
        if mod.split(".")[0] == "model":
            assert all(d.split(".")[0] in ("kernels", "model") for d in deps), f"{mod} imports {deps}"


def test_no_import_cycles():
    graph = repo_modules()
    # a package's __init__ importing its own submodules is not a cycle through them
    edges = {m: {d for d in ds if not (d.startswith(m + ".") and m in ("nanoalign", "kernels"))}
             for m, ds in graph.items()}
    state = {}

    def visit(m, path):
        state[m] = "open"
        for d in sorted(edges.get(m, ())):
            if state.get(d) == "open":
                pytest.fail("import cycle: " + " -> ".join(path + [m, d]))
            if d not in state:
                visit(d, path + [m])
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m, [])


def outside_imports(src, banned=NOT_IN_LIBRARY):
    """[(line, module)] of the imports in `src` of a banned package (at any depth in the file)."""
    found = []
    for node in ast.walk(ast.parse(src)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            names = [str(node.args[0].value)]
        found += [(node.lineno, n) for n in names if n.split(".")[0] in banned]
    return found


def test_the_library_never_imports_transformers():
    for top in LIBRARY:
        for dirpath, _, names in os.walk(os.path.join(ROOT, top)):
            for n in sorted(names):
                if n.endswith(".py"):
                    path = os.path.join(dirpath, n)
                    found = outside_imports(open(path).read())
                    assert not found, f"{os.path.relpath(path, ROOT)} imports {found}"


def test_the_import_check_sees_each_form():
    src = ("import os\nimport transformers.models.llama as L\ndef f():\n    from peft import LoraConfig\n"
           "    importlib.import_module('trl')\n    from .datasets import x\n    import datasets_helper\n"
           "    __import__('accelerate')\n")
    assert outside_imports(src) == [(2, "transformers.models.llama"), (4, "peft"), (5, "trl"),
                                    (8, "accelerate")]


def test_the_transformers_reference_cannot_import_the_repository(hf):
    """The reference runs where the repository is not on sys.path, so `kernels` is Hugging Face's
    (or absent, with transformers < 5.25) and the project's packages cannot be found."""
    where = hf.ask("where", modules=["kernels", "nanoalign", "model"])[0]
    on_path = {os.path.realpath(p or ".") for p in where["sys_path"]}
    assert not on_path & {os.path.realpath(ROOT), os.path.realpath(os.path.join(ROOT, "tests"))}, on_path
    assert not os.path.realpath(where["cwd"]).startswith(os.path.realpath(ROOT) + os.sep)
    assert where["modules"]["nanoalign"] is None and where["modules"]["model"] is None
    kernels = where["modules"]["kernels"] or []
    for place in kernels if isinstance(kernels, list) else [kernels]:
        assert not os.path.realpath(place).startswith(os.path.realpath(ROOT) + os.sep), place


def test_the_walker_sees_a_cycle(tmp_path, monkeypatch):
    """The cycle test can fail: a fake graph with a cycle is caught."""
    fake = {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    monkeypatch.setattr(sys.modules[__name__], "repo_modules", lambda: fake)
    with pytest.raises(pytest.fail.Exception, match="import cycle"):
        test_no_import_cycles()


# -- what git keeps out ------------------------------------------------------------------------------
def test_checkpoints_and_runs_linked_from_another_disk_stay_out_of_git(tmp_path):
    """README's checkpoint goes in checkpoints/ and runs write to out/, both in .gitignore. Linked in
    from a larger disk (`ln -s /data/checkpoints checkpoints`), each is a symlink, which the patterns
    'checkpoints/' and 'out/' (directories only) did not match: `git status` listed the link and
    `git add -A` committed it. Here a fresh repository with this .gitignore and the two links, and
    files deeper in the tree named like them, which must not be ignored."""
    import shutil
    import subprocess
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    repo, disk = tmp_path / "repo", tmp_path / "disk"
    repo.mkdir()
    disk.mkdir()
    shutil.copy(os.path.join(ROOT, ".gitignore"), repo)
    for name in ("checkpoints", "out"):
        os.symlink(disk, repo / name)
    # what the check must still see: a file of ours, and source elsewhere in the tree that merely
    # bears one of the two names (an unanchored pattern ignored a folder named out/ at any depth)
    ours = ["mine.py", "nanoalign/out/report.py", "docs/checkpoints", "nanoalign/out.py"]
    for name in ours:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text("")
    subprocess.run([git, "init", "-q"], cwd=repo, check=True)
    status = subprocess.run([git, "status", "--porcelain", "--untracked-files=all"], cwd=repo,
                            check=True, capture_output=True, text=True).stdout
    assert sorted(status.splitlines()) == sorted(["?? .gitignore"] + [f"?? {n}" for n in ours]), status
