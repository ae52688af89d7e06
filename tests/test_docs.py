"""Long text checked like code: every relative link and every repository file path named in the
README, CHANGELOG.md, docs/ and the benchmarks' READMEs exists; the README's minimal example
runs as written (on CPU, on the reference backend); the modules' help says what differs from
torch's."""
import contextlib
import functools
import inspect
import io
import os
import pydoc
import re
from pathlib import Path

import pytest
import torch

import fastcells

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "bench" / "README.md",
               ROOT / "bench" / "results" / "README.md", *(ROOT / "docs").glob("*.md")])
FILE_EXT = ("py", "md", "json", "txt", "png", "sh", "log", "toml", "cfg", "yml", "yaml", "xml")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
SKIP_DIRS = {".git", "__pycache__", ".ci-venv", "fastcells.egg-info", ".pytest_cache"}


def _ids(paths):
    return [str(p.relative_to(ROOT)) for p in paths]


def _prose(text):
    """The text without fenced code blocks (commands with placeholders live there)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _slug(heading):
    """GitHub's anchor of a markdown heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text))


def _anchors(md_path):
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", _prose(md_path.read_text(
        encoding="utf-8")), re.M)}


@functools.lru_cache(maxsize=None)
def _repo_files():
    """The names of the repository's files (virtual environments and caches left out)."""
    found = set()
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith("venv")]
        found.update(files)
    return found


def _path_like(span):
    """The code span as a repository path to check, or None (code, a module name, a glob, a
    placeholder, a fragment such as `.md` or `_ratio.png`)."""
    if not re.fullmatch(r"[\w./-]+", span) or span[0] in "._-" and not span.startswith(".ci/"):
        return None
    last = span.rstrip("/").rsplit("/", 1)[-1]
    has_ext = "." in last and last.rsplit(".", 1)[1] in FILE_EXT
    if "/" not in span:
        return span if has_ext else None
    first = span.split("/", 1)[0]
    if "." in first and first not in (".ci", "..", "."):
        return None                               # a module path: torch.nn.LSTM/GRU/RNN
    if re.fullmatch(r"[A-Z_]+", first):
        return None                               # a placeholder folder: OUTDIR/bench.log
    if has_ext or span.endswith("/") or "." not in last:
        return span
    return None


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_relative_links_resolve(doc):
    text = _prose(doc.read_text(encoding="utf-8"))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):          # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{doc.relative_to(ROOT)}: broken links {broken}"


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_named_files_exist(doc):
    names = _repo_files()
    missing = []
    for span in CODE_SPAN.findall(_prose(doc.read_text(encoding="utf-8"))):
        path = _path_like(span.strip())
        if path is None:
            continue
        if "/" in path:
            if not ((ROOT / path).exists() or (doc.parent / path).exists()):
                missing.append(path)
        elif path not in names:
            missing.append(path)
    assert not missing, f"{doc.relative_to(ROOT)} names files that do not exist: {missing}"


def _readme_example():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Minimal example", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    return code


def test_readme_example_runs_as_written(monkeypatch):
    """Exactly as written, but on CPU (no CUDA device seen) and on the reference backend."""
    code = _readme_example()
    assert 'device = "cuda" if torch.cuda.is_available() else "cpu"' in code
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("FASTCELLS_BACKEND", "reference")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md (Minimal example)", "exec"), {"__name__": "__readme__"})
    printed = out.getvalue()
    assert "fastcells.LSTM(32, 64, num_layers=2, batch_first=True) (8, 50, 64)" in printed
    assert "fastcells.GRU(32, 64, batch_first=True) (8, 50, 10)" in printed


MODULES = [fastcells.LSTM, fastcells.GRU, fastcells.RNN,
           fastcells.LSTMCell, fastcells.GRUCell, fastcells.RNNCell]


@pytest.mark.parametrize("cls", MODULES, ids=[c.__name__ for c in MODULES])
def test_help_says_what_differs_from_torch(cls):
    text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
    for needed in ("backend", "'auto'", "'triton'", "'reference'", "'native'", "CUDA", "CPU",
                   "TRITON_INTERPRET=1", "torch.compile", f"torch.nn.{cls.__name__}", "limits"):
        assert needed in text, needed
    sig = inspect.signature(cls)
    assert list(sig.parameters)[:2] == ["input_size", "hidden_size"]
    assert sig.parameters["backend"].kind is inspect.Parameter.KEYWORD_ONLY
    assert f"{cls.__name__}(input_size" in text          # help shows it, not (*args, **kwargs)
    torch_cls = getattr(torch.nn, cls.__name__)
    args = ((3, 5, 2, "relu") if cls is fastcells.RNN else (3, 5))
    sig.bind(*args, backend="reference")                  # torch's positional order binds
    ours, theirs = cls(*args), torch_cls(*args)
    assert repr(ours) == "fastcells." + repr(theirs)
    assert str(inspect.signature(ours)) == str(inspect.signature(theirs))   # forward's, as torch
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())


def test_convert_names_the_swapped_modules_in_repr():
    model = fastcells.convert(torch.nn.Sequential(torch.nn.GRU(3, 4), torch.nn.Linear(4, 2)))
    assert "(0): fastcells.GRU(3, 4)" in repr(model) and "(1): Linear(" in repr(model)
