"""The comparison tool's instruct preset, CPU-sized: every method of the four papers for one step on
a handful of on-policy prompts from a tiny random start, end to end (data build, runs, table)."""
import torch

from experiments import compare, task
from model.checkpoint import save_model
from model.model import Transformer, config_from_preset


def test_instruct_smoke_preset_runs_every_method(tmp_path, capsys):
    torch.manual_seed(0)
    start = str(tmp_path / "start")
    save_model(Transformer(config_from_preset("tiny")), start, task.build_tokenizer())
    compare.main(["--preset", "instruct_smoke", "--seeds", "1", "--start", start, "--n_test", "3",
                  "--answer_tokens", "8", "--out", str(tmp_path / "out"), "--", "--max_length", "512"])
    out = capsys.readouterr().out
    assert "== the start" in out and "follows" in out and "explains" in out
    table = out[out.index("instruct_smoke: 1 seed(s)"):]
    for label, _, _ in compare.PRESETS["instruct_smoke"]:
        assert f"| {label} |" in table, label
    assert (tmp_path / "out" / "instruct_smoke" / "data-s1" / "build.json").exists()
