"""bench/persistent_sweep.py without a GPU: the dispatch table it writes from fabricated rows
(the choice rule, the format fastcells.kernels.persistent reads, the lookup), the targets'
summary, the order of the plan, and a dry run of its plumbing through the interpreter."""
import json
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))   # appended: the installed fastcells keeps precedence

from bench import persistent_sweep as ps  # noqa: E402
from bench.persistent_sweep import Shape  # noqa: E402

PLAN = {"grid": [32, 1, 1], "block_b": 64, "block_j": 16, "num_warps": 8}


def row(shape, pers=(1.0, 0.5), step=(2.0, 1.0), cudnn=(1.5, 0.7), ran=True, plan=PLAN,
        mem=(100.0, 300.0, 120.0)):
    """A sweep row of ``shape``: (fwd+bwd, fwd) medians per impl, None for a failed one."""
    def q(v):
        return None if v is None else [v, v * 0.9, v * 1.1]
    ms = {p: {impl: q(None if v is None else v[i]) for impl, v in
              (("persistent", pers), ("step", step), ("cudnn", cudnn))}
          for i, p in ((0, "fwd+bwd"), (1, "fwd"))}
    return dict(**shape._asdict(), I=shape.H, ms=ms, errors={},
                peak_mem_mb=dict(zip(ps.IMPLS, mem)), persistent_plan=plan,
                persistent_plan_error=None, persistent_launches=None if ran is None else 2 * ran,
                persistent_ran=ran, dry_run=False)


FR16 = Shape("lstm", "fp16", B=64, H=512, T=100)
FRBF = Shape("lstm", "bf16", B=64, H=512, T=100)


@pytest.mark.parametrize("kw, expected", [
    pytest.param({}, "persistent", id="faster-both"),
    pytest.param(dict(pers=(1.0, 1.5)), "step", id="slower-fwd"),
    pytest.param(dict(pers=(2.5, 0.5)), "step", id="slower-fwd+bwd"),
    pytest.param(dict(pers=(2.0, 0.5)), "step", id="tie"),
    pytest.param(dict(pers=None), "step", id="failed"),
    pytest.param(dict(ran=False), "step", id="did-not-run"),
    pytest.param(dict(ran=None), "persistent", id="uncounted-eligible"),
    pytest.param(dict(ran=None, plan=None), "step", id="uncounted-ineligible"),
    pytest.param(dict(step=None), "step", id="step-failed"),
])
def test_choice_is_the_conservative_one(kw, expected):
    assert ps.choice(row(FR16, **kw)) == expected


def test_table_format(tmp_path):
    rows = [row(FR16), row(FRBF, pers=(3.0, 0.5)),
            row(Shape("lstm", "bf16", B=64, H=512, T=100, packed=True))]
    meta = dict(gpu="NVIDIA H200", commit="abc123", date="2026-12-02", torch="x")
    out = tmp_path / "table.json"
    table = ps.write_table(out, dict(meta=meta, rows=rows), str(tmp_path / "sweep_rows.json"))
    assert json.loads(out.read_text()) == table
    assert {k: table["meta"][k] for k in ("gpu", "commit", "date", "source")} == dict(
        gpu="NVIDIA H200", commit="abc123", date="2026-12-02", source="sweep_rows.json")
    assert "dry_run" not in table["meta"]
    first = table["rows"][0]
    assert {k: first[k] for k in ("cell", "dtype", "H", "B", "T", "packed", "layers",
                                  "bidirectional", "choice")} == dict(
        cell="lstm", dtype="float16", H=512, B=64, T=100, packed=False, layers=1,
        bidirectional=False, choice="persistent")
    assert (first["persistent_ms"], first["step_ms"], first["cudnn_ms"]) == (1.0, 2.0, 1.5)
    assert (first["persistent_fwd_ms"], first["step_fwd_ms"], first["cudnn_fwd_ms"]) == (
        0.5, 1.0, 0.7)
    assert [r["choice"] for r in table["rows"]] == ["persistent", "step", "persistent"]
    assert [r["dtype"] for r in table["rows"]] == ["float16", "bfloat16", "bfloat16"]


def _lookup_rows():
    def t(H, B, choice, dtype="bfloat16", cell="lstm", T=100):
        return dict(cell=cell, dtype=dtype, H=H, B=B, T=T, choice=choice)
    return [t(256, 16, "persistent"), t(256, 16, "persistent", T=1024),
            t(512, 64, "persistent"), t(512, 64, "step", T=1024),   # one row of the bucket: step
            t(256, 64, "persistent"), t(512, 16, "persistent", dtype="float16"),
            t(512, 256, "persistent", cell="gru")]


@pytest.mark.parametrize("cell, dtype, H, B, expected", [
    pytest.param("lstm", "bfloat16", 200, 5, "persistent", id="inside-256x16"),
    pytest.param("lstm", "bfloat16", 256, 16, "persistent", id="on-256x16"),
    pytest.param("lstm", "bfloat16", 256, 17, "persistent", id="to-256x64"),
    pytest.param("lstm", "bfloat16", 300, 16, "step", id="512x64-has-a-step-row"),
    pytest.param("lstm", "bfloat16", 513, 1, "step", id="no-covering-H"),
    pytest.param("lstm", "bfloat16", 64, 65, "step", id="no-covering-B"),
    pytest.param("lstm", "float16", 100, 3, "persistent", id="other-dtype"),
    pytest.param("lstm", "float32", 100, 3, "step", id="dtype-unmeasured"),
    pytest.param("gru", "bfloat16", 100, 3, "persistent", id="gru"),
    pytest.param("rnn_tanh", "bfloat16", 100, 3, "step", id="cell-unmeasured"),
])
def test_lookup_rule(cell, dtype, H, B, expected):
    assert ps.lookup(_lookup_rows(), cell, dtype, H, B) == expected


def test_lookup_agrees_with_the_kernel_side():
    """The summary's rule is the one fastcells.kernels.persistent applies to the table."""
    persistent = pytest.importorskip("fastcells.kernels.persistent")
    if not hasattr(persistent, "measured_faster"):
        pytest.skip("fastcells.kernels.persistent has no measured_faster")
    rows = [dict(r, gpu="G") for r in _lookup_rows()]
    dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    for cell in ("lstm", "gru", "rnn_tanh"):
        for dtype, torch_dtype in dtypes.items():
            for H in (1, 200, 256, 300, 512, 513):
                for B in (1, 16, 17, 64, 65, 256, 300):
                    ours = ps.lookup(rows, cell, dtype, H, B) == "persistent"
                    theirs = persistent.measured_faster(cell, torch_dtype, H, B, "G", rows)
                    assert ours == theirs, (cell, dtype, H, B)
            assert not persistent.measured_faster(cell, torch.bfloat16, 1, 1, "other GPU", rows)


def test_targets_from_rows():
    flash16 = Shape("lstm", "fp16", B=16, H=768, T=1024)
    flashbf = Shape("lstm", "bf16", B=16, H=768, T=1024)
    rows = [row(FR16, pers=(1.2, 0.4), cudnn=(2.0, 0.5)),
            row(FRBF, pers=(0.5, 0.2), cudnn=(4.0, 1.0), mem=(150.0, 500.0, 100.0)),
            row(flash16, pers=(6.0, 2.048), cudnn=(8.0, 3.0)),
            row(flashbf, pers=(9.0, 3.072), cudnn=(7.0, 2.0), ran=False, plan=None),
            row(Shape("lstm", "bf16", B=64, H=512, T=100, packed=True), pers=(3.0, 1.0),
                cudnn=(6.0, 2.0)),
            row(Shape("lstm", "bf16", B=1, H=256, T=1024), pers=(1.0, 0.5), cudnn=(5.0, 1.0)),
            row(Shape("lstm", "bf16", B=256, H=512, T=100), pers=(2.1, 0.5), step=(2.0, 1.0))]
    got = {name: (value, limit, note) for name, value, limit, note in ps.targets(rows)}
    assert got["fp16 fastrnns fwd+bwd / cuDNN fp16"][:2] == (pytest.approx(0.6), 0.8)
    assert got["FlashRNN shape fp16 fwd+bwd / cuDNN fp16"][0] == pytest.approx(0.75)
    bf = got["FlashRNN shape bf16 fwd+bwd / cuDNN fp16"]      # against cuDNN *fp16*
    assert bf[0] == pytest.approx(9.0 / 8.0) and "did not run" in bf[2]
    assert got["FlashRNN shape fp16 forward us/step"][0] == pytest.approx(2.0)
    assert got["FlashRNN shape bf16 forward us/step"][0] == pytest.approx(3.0)
    assert got["bf16 fastrnns fwd+bwd / cuDNN bf16"][0] == pytest.approx(0.125)
    assert got["packed bf16 (lengths 1..100) fwd+bwd / cuDNN"][0] == pytest.approx(0.5)
    assert got["small batch B=1 T=1024 H=256 bf16 / cuDNN"][0] == pytest.approx(0.2)
    assert got["small batch B=16 T=1024 H=256 bf16 / cuDNN"][0] is None   # not measured
    mem = got["peak memory persistent / torch.nn (worst row it ran)"]
    assert mem[0] == pytest.approx(1.5) and "lstm bf16 B=64 H=512 T=100" in mem[2]
    # B=256 H=512 chose step (slower fwd+bwd), so nothing auto picks is slower than step
    slower = got["shapes slower than the step chain under the measured rule"]
    assert slower[:2] == (0, 0)
    text = ps.format_targets(ps.targets(rows))
    assert "NOT met" in text and "not measured" in text


def test_targets_count_a_slower_shape_the_rule_picks():
    """A row the rule sends to persistent that was slower than step in one pass is counted:
    here a bucket is all 'persistent' only because the choice was written by hand."""
    r = row(FRBF, pers=(1.0, 1.5))          # slower fwd
    table = ps.table_rows([r])
    assert table[0]["choice"] == "step"
    rows = [r]
    items = dict((n, v) for n, v, _, _ in ps.targets(rows))
    assert items["shapes slower than the step chain under the measured rule"] == 0
    orig = ps.choice
    try:
        ps.choice = lambda _row: "persistent"
        items = dict((n, v) for n, v, _, _ in ps.targets(rows))
    finally:
        ps.choice = orig
    assert items["shapes slower than the step chain under the measured rule"] == 1


def test_plan_order():
    shapes = ps.sweep_plan()
    assert len(shapes) == len(set(shapes))
    assert shapes[: len(ps.FIRST)] == ps.FIRST
    assert set(ps.GRID) <= set(shapes) and shapes[-1] == ps.LAST[0]
    assert shapes[0] == FR16
    eligible = lambda s: s.H < 1024   # noqa: E731
    ordered = ps.order_grid(shapes, eligible)
    grid = ordered[len(ps.FIRST):-1]
    assert sorted(grid) == sorted(s for s in ps.GRID if s not in ps.FIRST)
    keys = [(not eligible(s), s.T, s.B * s.H * s.H) for s in grid]
    assert keys == sorted(keys)
    assert grid[0] == Shape("lstm", "bf16", B=1, H=256, T=100)
    assert all(s.H == 1024 for s in grid[-8:])


@pytest.mark.skipif(torch.cuda.is_available(), reason="on CUDA the sweep itself runs")
def test_without_cuda_it_says_so(tmp_path, capsys):
    assert ps.main(["--out", str(tmp_path / "rows.json")]) == 0
    assert "needs a CUDA GPU" in capsys.readouterr().out
    assert not (tmp_path / "rows.json").exists()


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                    reason="the dry run goes through the interpreter")
@pytest.mark.parametrize("table", [False, True], ids=["no-table", "table"])
def test_dry_run_plumbing(tmp_path, monkeypatch, capsys, table):
    """Two tiny shapes end to end on CPU: rows written and marked, a table only when asked."""
    monkeypatch.setattr(ps, "sweep_plan", lambda: [Shape("rnn_tanh", "fp32", B=1, H=5, T=2),
                                                   Shape("gru", "fp32", B=3, H=5, T=2,
                                                         packed=True)])
    monkeypatch.delenv("FASTCELLS_RECURRENCE", raising=False)
    out, tab = tmp_path / "rows.json", tmp_path / "table.json"
    argv = ["--dry-run", "--out", str(out)] + (["--table", str(tab)] if table else [])
    assert ps.main(argv) == 0
    text = capsys.readouterr().out
    assert "DRY RUN" in text and "mean nothing" in text and "targets" in text
    data = json.loads(out.read_text())
    assert data["meta"]["dry_run"] is True
    rows = data["rows"]
    assert [(r["cell"], r["packed"], r["H"]) for r in rows] == [("rnn_tanh", False, 5),
                                                                ("gru", True, 5)]
    from fastcells.kernels.config import RECURRENCE
    forced = "persistent" in RECURRENCE.choices   # the switch takes it: the kernel must run
    for r in rows:
        assert r["dry_run"] is True
        for p in ("fwd", "fwd+bwd"):
            for impl in ("persistent", "step", "cudnn") if forced else ("step", "cudnn"):
                assert r["ms"][p][impl][0] > 0, (r["errors"], p, impl)
        if forced:
            assert r["persistent_plan"] is not None and r["persistent_ran"] is True, r
        assert r["peak_mem_mb"] == dict(persistent=None, step=None, cudnn=None)
    assert "FASTCELLS_RECURRENCE" not in os.environ
    assert tab.exists() == table
    if table:
        t = json.loads(tab.read_text())
        assert t["meta"]["dry_run"] is True and len(t["rows"]) == 2
