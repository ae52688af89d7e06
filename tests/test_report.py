"""bench/report.py: one ratio convention (fastcells time / baseline time, below 1: fastcells is
faster) in every table, summary and plot, and no rows published without the clean commit they
measured.  Hand-made rows with round timings, so every ratio is known exactly."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))   # appended: the installed fastcells keeps precedence

from bench import report  # noqa: E402

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
CLEAN = "0123456789abcdef0123456789abcdef01234567"


def _row(op, case, impl, ms, commit, pass_="fwd+bwd", host_ms=None):
    return {"op": op, "case": case, "dtype": "fp32", "impl": impl, "pass": pass_,
            "shape": {"T": 5, "B": 3}, "ms": ms, "host_ms": host_ms, "floor_ms": 0.5,
            "floor_ratio": ms / 0.5, "gb_s": 10.0, "peak_mem_mb": None, "error": None,
            "commit": commit, "device": "NVIDIA Test", "date": "2026-01-02T03:04:05Z"}


def _results(tmp_path, commit=CLEAN, name="rows"):
    """fastcells twice as fast as native (LSTM), four times as fast as torch's clip."""
    rows = [_row("lstm", "tiny", "fastcells", 1.0, commit), _row("lstm", "tiny", "native", 2.0, commit),
            _row("clip", "set", "fastcells", 1.0, commit, "clip", host_ms=0.5),
            _row("clip", "set", "torch_foreach", 4.0, commit, "clip", host_ms=2.0)]
    meta = {"device": "NVIDIA Test", "date": "2026-01-02T03:04:05Z", "commit": commit,
            "mode": "quick", "timer": "do_bench", "torch": "2.x", "triton": "3.x"}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"meta": meta, "rows": rows}), encoding="utf-8")
    return path, meta, rows


def test_ratio_is_fastcells_over_baseline():
    fast, slow = (report.Row.from_json(_row("lstm", "t", i, ms, CLEAN))
                  for i, ms in (("fastcells", 1.0), ("native", 2.0)))
    assert report.ratio(fast, slow) == 0.5 and report.ratio(slow, fast) == 2.0
    (comparison,), _ = report.group([fast, slow])
    assert comparison.ratio("native") == 0.5
    assert "below 1.00 fastcells is faster" in report.CONVENTION


def test_tables_and_summary_state_and_use_the_convention(tmp_path):
    path, meta, rows = _results(tmp_path)
    text = report.markdown(meta, rows)
    assert report.CONVENTION in text
    assert "| lstm | tiny | fp32 | fwd+bwd | 1 | 0.5 | 2.0 | 0.50 |" in text   # x native
    assert "| set | fp32 | torch_foreach | 4 | 2 | 10 | 8.0 | 0.25 |" in text    # fastcells / this
    assert "speed-up" not in text.lower() and "Not publishable" not in text
    (lstm_line,) = [ln for ln in report.summary(meta, rows).splitlines() if ln.startswith("lstm")]
    assert lstm_line.split()[-2:] == ["0.50", "2.0"]            # fc/native, fc xfloor
    section = report.readme_section(path)
    assert report.CONVENTION in section and "| 0.50 |" in section
    assert "| 0.25 / 0.25 |" in section     # clip: device and host time over torch's


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="plots need matplotlib")
def test_plots_are_named_and_titled_by_the_ratio(tmp_path):
    path, _, _ = _results(tmp_path)
    written = {p.name for p in report.write(path)}
    assert written == {"rows.md", "rows_ratio.png", "rows_floor.png", "rows_clip.png"}


@pytest.mark.parametrize("commit", ["b5f6dad4ef8cce7de1eb635603e0a2458bf3d919-dirty", "unknown", None])
def test_rows_without_a_clean_commit_are_refused(tmp_path, capsys, commit):
    path, meta, rows = _results(tmp_path, commit)
    with pytest.raises(report.Unpublishable, match="--allow-dirty REASON"):
        report.write(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.json"]   # nothing written
    with pytest.raises(report.Unpublishable):
        report.readme_section(path)
    assert report.main([str(path)]) == 2
    assert "not publishable" in capsys.readouterr().err
    assert report.main(["--readme", str(path)]) == 2
    assert "NOT PUBLISHABLE" in report.summary(meta, rows)   # a look is shown, and says so


def test_one_dirty_row_makes_the_file_unpublishable(tmp_path):
    path, meta, rows = _results(tmp_path)
    rows[1]["commit"] = CLEAN + "-dirty"
    assert "-dirty" in report.commit_problem(meta, rows)
    assert report.commit_problem(meta, rows[:1]) is None


def test_allow_dirty_draws_them_under_a_banner_with_the_reason(tmp_path):
    path, _, _ = _results(tmp_path, "b5f6dad-dirty")
    reason = "the tree was commit 1234567's code under a stale .git"
    out = tmp_path / "out"
    assert report.main([str(path), "--out", str(out), "--allow-dirty", reason]) == 0
    text = (out / "rows.md").read_text(encoding="utf-8")
    banner = text.splitlines()[2]
    assert banner.startswith("> **Not publishable as results**") and "`b5f6dad-dirty`" in banner
    assert banner.endswith(reason) and report.CONVENTION in text
    assert report.readme_section(path, allow_dirty=reason).startswith("> **Not publishable")
