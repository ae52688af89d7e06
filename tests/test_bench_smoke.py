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

from bench import cases, floors, report, run, workloads  # noqa: E402
from bench.cases import CellCase, ClipCase, Job, LayerCase  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None   # plots need it
QUIET = dict(log=lambda line: None, floors_kw=run.SMOKE_FLOORS)


@pytest.fixture
def clean_commit(monkeypatch):
    """Rows record a clean commit, as on a clean checkout (the report refuses -dirty rows)."""
    from bench import env
    monkeypatch.setattr(env, "git_commit", lambda: "0123456789abcdef0123456789abcdef01234567")


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


def test_cli_writes_rows_table_and_plots(tmp_path, capsys, clean_commit):
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


def test_fastcells_rows_and_their_report(tmp_path, clean_commit):
    """fastcells against its baselines (on CPU through Triton's interpreter: the wiring, not a
    speed), and the comparison table and speed-up plot drawn from those rows."""
    jobs = [Job(LayerCase("lstm", "tiny", T=3, B=2, I=5, H=7), ("fp32",), ("fastcells", "native")),
            Job(CellCase("gru_cell", "tiny", B=3, I=5, H=7), ("fp32",), ("fastcells", "native")),
            Job(ClipCase("tiny", ((7, 5), (5,), (3, 3))), ("fp32",), ("fastcells", "torch_loop")),
            Job(cases.packed_case("gru", B=4, T=5, I=3, H=6), ("fp32",), ("fastcells", "native"))]
    meta, rows = run.run(jobs, DEVICE, mode="smoke", allow_interpreter=True, **QUIET)
    check_rows(rows)
    assert len(rows) == 2 * 3 + 2 * 3 + 2 + 2 * 3
    assert {r["impl"] for r in rows} == {"fastcells", "native", "torch_loop"}
    path = tmp_path / "rows.json"
    run.write_json(path, meta, rows)
    written = report.write(path)
    if HAS_MATPLOTLIB:
        assert Path(f"{tmp_path / 'rows'}_ratio.png") in written
    text = (tmp_path / "rows.md").read_text()
    assert "## fastcells against the baselines" in text and "| lstm | tiny | fp32 | fwd |" in text


def test_cpu_mode_never_times_triton_without_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    case = LayerCase("lstm", "tiny", T=3, B=2, I=5, H=7)
    reason = workloads.not_applicable(case, "fastcells", torch.device("cpu"),
                                          allow_interpreter=True)
    assert reason and "GPU" in reason
    assert workloads.not_applicable(case, "native", torch.device("cpu")) is None


def test_packed_case_times_packing_and_counts_active_rows(monkeypatch):
    case = cases.packed_case("lstm", B=4, T=5, I=3, H=6)
    assert sorted(case.lengths) == [1, 2, 4, 5] and case.rows == 12 and case.T == max(case.lengths)
    assert list(case.lengths) != sorted(case.lengths, reverse=True)   # packing has to sort
    assert case.shape()["active"] == 12
    padded = LayerCase("lstm", "p", T=5, B=4, I=3, H=6)
    for pass_ in cases.PASSES:      # only the active rows are work; the steps stay T
        (f_packed, e_packed), (f_padded, e_padded) = (
            floors.model(case)[pass_], floors.model(padded)[pass_])
        assert f_packed * 20 == f_padded * 12 and e_packed < e_padded
        assert floors.dependent_steps(case, pass_) == floors.dependent_steps(padded, pass_)
    calls, real = [], workloads.pack_padded_sequence
    monkeypatch.setattr(workloads, "pack_padded_sequence",
                        lambda *a, **k: calls.append(k) or real(*a, **k))
    passes = workloads.build(case, "native", torch.float32, torch.device("cpu"))
    (out,) = passes["fwd"].fn()          # packs inside the timed call, every call
    passes["fwd+bwd"].fn()
    assert out.shape == (12, 6) and calls == [dict(enforce_sorted=False)] * 2
    for impl in ("cell_loop", "reference_compiled"):
        assert "padded" in workloads.not_applicable(case, impl, torch.device("cpu"))


def test_layers_plan_order(tmp_path):
    """The GPU plan (not run here): most important first, bf16 first, fastcells vs native."""
    jobs = cases.plan("layers", torch.device("cuda"))
    head = [(j.case.op, j.case.name) for j in jobs[:9]]
    assert head == [("lstm", "fastrnns"), ("gru", "fastrnns"), ("lstm", "small-B16-T1024"),
                    ("gru", "small-B16-T1024"), ("lstm", "small-B1-T1024"),
                    ("lstm", "flashrnn-1head"), ("lstm", "fastrnns-2L-bidir"),
                    ("lstm", "large-H1024"), ("lstm", "packed-B64-T100")]
    packed = jobs[8].case
    assert (packed.B, packed.T, packed.I, packed.H, packed.rows) == (64, 100, 512, 512, 3232)
    assert sorted(packed.lengths)[0] == 1 and max(packed.lengths) == 100
    assert all(j.dtypes == ("bf16", "fp32", "fp16") and j.impls == ("fastcells", "native")
               for j in jobs)
    ops = [j.case.op for j in jobs]
    assert ops.index("rnn") == len(ops) - ops[::-1].index("gru") and ops.count("rnn") == len(
        cases.layer_cases("rnn"))
    keys = [(j.case.op, j.case.name) for j in jobs]
    assert len(set(keys)) == len(keys) == 3 * len(cases.layer_cases("lstm"))
    cpu = cases.plan("layers", torch.device("cpu"))     # what a CPU run times: small, fp32
    assert any(j.case.packed for j in cpu) and all(j.dtypes == ("fp32",) and j.case.H <= 256
                                                  for j in cpu)
    env = dict(date="2026-01-01T00:00:00Z", device="NVIDIA H100")
    assert run.result_path(tmp_path, env, "layers").name.endswith("_layers.json")
    assert run.parse_args(["--layers", "--budget-s", "420"]).layers


def test_sweeps_keep_a_failing_path_as_a_result():
    """The GPU sweeps (bench/directions_sweep.py and the others, bench/sweeps.py) share ``compare``:
    a path that raises is a row entry with its error, beside the ones that ran."""
    from bench.sweeps import compare

    def measure(impl):
        if impl == "broken":
            raise RuntimeError("no kernel")
        return {"fwd": (1.0, 0.9, 1.1), "fwd+bwd": (2.0, 1.8, 2.2)}

    out = compare(("ok", "broken"), measure)
    assert list(out) == ["fwd", "fwd+bwd"]
    ms, errors, med = out["fwd+bwd"]
    assert ms == {"ok": (2.0, 1.8, 2.2), "broken": None}
    assert errors == {"broken": "RuntimeError: no kernel"}
    assert med["ok"] == 2.0 and med["broken"] != med["broken"]   # nan


def test_commit_env_wins_over_the_tree(monkeypatch):
    """``FASTCELLS_COMMIT`` names the code measured even where the tree has a ``.git`` (a stale
    one on a copied tree would say ``-dirty``); unset, the commit is read from git."""
    import re

    from bench import env
    from bench.sweeps import _commit
    given = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("FASTCELLS_COMMIT", given)
    assert (env.ROOT / ".git").exists()
    assert env.git_commit() == given and _commit() == given
    monkeypatch.delenv("FASTCELLS_COMMIT")
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?|unknown", env.git_commit())
