"""The benchmark code (bench/) on tiny shapes, so that it cannot rot: the CLI writes its JSON
rows, markdown table and plots, and every row has the schema the report and the committed
results rely on.  Timings are not asserted (tiny shapes, a busy CI machine)."""
import datetime
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))   # appended: the installed fastcells keeps precedence

from bench import cases, report, run, workloads  # noqa: E402
from bench.cases import CellCase, ClipCase, Job, LayerCase  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None   # plots need it
QUIET = dict(log=lambda line: None, floors_kw=run.SMOKE_FLOORS)


def check_rows(rows):
    assert rows
    for r in rows:
        assert list(r)[: len(run.SCHEMA)] == list(run.SCHEMA)
        assert set(r) == set(run.SCHEMA + run.EXTRA)
        assert r["error"] is None, r
        assert r["op"] in cases.OPS and r["impl"] in cases.IMPLS and r["dtype"] in cases.DTYPES
        assert r["pass"] in (("clip",) if r["op"] == "clip" else cases.PASSES)
        assert isinstance(r["shape"], dict) and r["shape"]
        assert 0 < r["ms_p20"] <= r["ms"] <= r["ms_p80"]
        assert r["floor_ms"] > 0 and r["floor_ratio"] == pytest.approx(r["ms"] / r["floor_ms"])
        assert r["bytes"] > 0 and r["gb_s"] > 0
        if r["op"] == "clip":
            assert r["flops"] is None and r["host_ms"] > 0
        else:
            assert r["flops"] > 0 and r["host_ms"] is None
        assert (r["peak_mem_mb"] is None) == (DEVICE.type != "cuda")
        assert r["device"] and r["torch"] == torch.__version__ and r["commit"]
        datetime.datetime.strptime(r["date"], "%Y-%m-%dT%H:%M:%SZ")


def test_cli_writes_rows_table_and_plots(tmp_path, capsys):
    impls = "native,cell_loop,reference,torch_foreach,torch_loop"
    assert run.main(["--smoke", "--out", str(tmp_path), "--impls", impls]) == 0
    (json_path,) = tmp_path.glob("*_smoke.json")
    stem = json_path.with_suffix("")
    for suffix in (".md",) + (("_floor.png", "_clip.png") if HAS_MATPLOTLIB else ()):
        assert Path(f"{stem}{suffix}").stat().st_size > 0, suffix
    meta, rows = report.load(json_path)
    check_rows(rows)
    plan = cases.select(cases.plan("smoke", DEVICE), impls=impls.split(","))
    want = {(j.case.op, j.case.name, d, i) for j in plan for d in j.dtypes for i in j.impls}
    assert {(r["op"], r["case"], r["dtype"], r["impl"]) for r in rows} == want
    assert meta["hardware"]["copy_gb_s"] > 0 and meta["skipped"] == []
    out = capsys.readouterr().out
    if DEVICE.type != "cuda":
        assert "need" in out and "GPU" in out     # says plainly that Triton timings need one
    assert "fastcells benchmark" in report.summary(meta, rows)


def test_fastcells_rows_and_their_report(tmp_path):
    """fastcells against its baselines (on CPU through Triton's interpreter: the wiring, not a
    speed), and the comparison table and speed-up plot drawn from those rows."""
    jobs = [Job(LayerCase("lstm", "tiny", T=3, B=2, I=5, H=7), ("fp32",), ("fastcells", "native")),
            Job(CellCase("gru_cell", "tiny", B=3, I=5, H=7), ("fp32",), ("fastcells", "native")),
            Job(ClipCase("tiny", ((7, 5), (5,), (3, 3))), ("fp32",), ("fastcells", "torch_loop"))]
    meta, rows = run.run(jobs, DEVICE, mode="smoke", allow_interpreter=True, **QUIET)
    check_rows(rows)
    assert len(rows) == 2 * 3 + 2 * 3 + 2
    assert {r["impl"] for r in rows} == {"fastcells", "native", "torch_loop"}
    path = tmp_path / "rows.json"
    run.write_json(path, meta, rows)
    written = report.write(path)
    if HAS_MATPLOTLIB:
        assert Path(f"{tmp_path / 'rows'}_speedup.png") in written
    text = (tmp_path / "rows.md").read_text()
    assert "## fastcells against the baselines" in text and "| lstm | tiny | fp32 | fwd |" in text


def test_cpu_mode_never_times_triton_without_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    case = LayerCase("lstm", "tiny", T=3, B=2, I=5, H=7)
    reason = workloads.not_applicable(case, "fastcells", torch.device("cpu"),
                                          allow_interpreter=True)
    assert reason and "GPU" in reason
    assert workloads.not_applicable(case, "native", torch.device("cpu")) is None
