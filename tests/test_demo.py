"""python -m fastcells.demo: the task, the CLI, the JSON, and the --quick outcome."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from fastcells import demo

CELLS = ["rnn", "lstm", "gru"]
MODEL_KEYS = {"cell", "seq_len", "test_mse", "baseline_mse", "solved", "vanishing_factor_init",
              "vanishing_factor"}
CLIP_KEYS = {"nonfinite_steps_without_clip", "nonfinite_steps_with_clip"}


def test_adding_problem():
    n, T = 2000, 12
    x, y = demo.adding_problem(n, T, torch.Generator().manual_seed(0))
    assert x.shape == (T, n, 2) and y.shape == (n,)
    values, markers = x[..., 0], x[..., 1]
    assert ((values >= 0) & (values <= 1)).all()
    assert set(markers.unique().tolist()) == {0.0, 1.0}
    assert (markers[:T // 2].sum(0) == 1).all() and (markers[T // 2:].sum(0) == 1).all()
    torch.testing.assert_close(y, (values * markers).sum(0))
    # Predicting the mean: variance of the sum of two U(0, 1) = 1/6.
    assert ((y - y.mean()) ** 2).mean().item() == pytest.approx(1 / 6, abs=0.015)
    x2, y2 = demo.adding_problem(n, T, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    with pytest.raises(ValueError, match="seq_len >= 2"):
        demo.adding_problem(3, 1, torch.Generator())


def test_solved_is_defined_once():
    assert demo.SOLVED_FRACTION == 0.1
    assert demo.solved(0.0099, 0.1) and not demo.solved(0.0101, 0.1)


def test_table_steps():
    assert demo.table_steps(50) == [1, 12, 25, 38, 50]
    assert demo.table_steps(100) == [1, 25, 50, 75, 100]
    assert demo.table_steps(3) == [1, 2, 3]
    assert demo.table_steps(2) == [1, 2]


def test_json_writes_infinity_as_a_standard_number():
    text = demo.dumps_json({"models": [{"vanishing_factor": math.inf, "x": -math.inf,
                                        "note": "Infinity stays a string"}], "y": [math.inf]})
    assert "Infinity" not in text.replace('"Infinity stays a string"', "")
    doc = json.loads(text)
    assert doc["models"][0]["vanishing_factor"] == math.inf and doc["y"] == [math.inf]
    assert doc["models"][0]["x"] == -math.inf
    assert doc["models"][0]["note"] == "Infinity stays a string"


def _check_schema(doc, seq_len):
    assert [m["cell"] for m in doc["models"]] == CELLS
    for m in doc["models"]:
        assert MODEL_KEYS <= set(m)
        assert m["seq_len"] == seq_len
        assert isinstance(m["solved"], bool)
        for k in ("test_mse", "baseline_mse"):
            assert isinstance(m[k], float) and math.isfinite(m[k]) and m[k] >= 0
        for k in ("vanishing_factor_init", "vanishing_factor"):
            assert isinstance(m[k], float) and m[k] > 0       # inf allowed (written as 1e999)
        assert m["solved"] == (m["test_mse"] < demo.SOLVED_FRACTION * m["baseline_mse"])
    assert CLIP_KEYS <= set(doc["clipping"])
    for k in CLIP_KEYS:
        assert isinstance(doc["clipping"][k], int) and doc["clipping"][k] >= 0


def test_small_run_writes_json_plot_and_report(tmp_path, capsys):
    out, png = tmp_path / "out.json", tmp_path / "demo.png"
    threads = torch.get_num_threads()
    demo.main(["--quick", "--seq-len", "8", "--steps", "30", "--seed", "3",
               "--json", str(out), "--plot", str(png)])
    assert torch.get_num_threads() == threads
    doc = json.loads(out.read_text())
    _check_schema(doc, 8)
    assert doc["config"]["steps"] == 30 and doc["config"]["seed"] == 3
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    for needle in ("Gradient flow", "vanishing factor", "Long dependencies", "Exploding gradients",
                   "Summary", "vanilla RNN (tanh)", "LSTM", "GRU", "solved",
                   f"wrote {out}", f"wrote {png}"):
        assert needle in text


def test_missing_matplotlib_skips_the_plot(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import matplotlib -> ImportError
    png = tmp_path / "demo.png"
    demo.main(["--seq-len", "4", "--steps", "2", "--plot", str(png)])
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert not png.exists()


@pytest.mark.parametrize("argv,message", [
    (["--seq-len", "1"], "--seq-len must be at least 2"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--plot", "x.pdf"], "PNG"),
    (["--backend", "cudnn"], "invalid choice"),
])
def test_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        demo.parse_config(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        demo.parse_config(["--device", "cuda"])
    assert "no CUDA device is available" in capsys.readouterr().err


def test_module_runs_as_a_command():
    r = subprocess.run([sys.executable, "-m", "fastcells.demo", "--help"], capture_output=True,
                       text=True, timeout=120, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    assert "--quick" in r.stdout and "--json" in r.stdout


def test_quick_defaults_show_the_lesson(tmp_path):
    """The demo's lesson, on the --quick defaults (seed 0): LSTM and GRU solve the adding
    problem, the vanilla RNN does not; the trained RNN's vanishing factor is above the gated
    cells'; non-finite steps happen only without clipping."""
    out = tmp_path / "quick.json"
    demo.main(["--quick", "--json", str(out)])
    doc = json.loads(out.read_text())
    _check_schema(doc, demo.PRESETS["quick"]["seq_len"])
    m = {d["cell"]: d for d in doc["models"]}
    assert m["lstm"]["solved"] and m["gru"]["solved"] and not m["rnn"]["solved"]
    assert m["rnn"]["vanishing_factor"] > max(m["lstm"]["vanishing_factor"],
                                              m["gru"]["vanishing_factor"])
    assert doc["clipping"]["nonfinite_steps_without_clip"] > 0
    assert doc["clipping"]["nonfinite_steps_with_clip"] == 0
