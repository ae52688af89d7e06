"""pytest setup of the benchmarks.

``pytest bench/`` (or a file or test under it) runs them with pytest-benchmark; a bare
``pytest`` from the repository root does not collect them: the default test run is
``pytest tests``, which never looks here.
"""
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _named_on_command_line(config):
    base = Path(config.invocation_params.dir)
    for arg in config.args:
        path = (base / str(arg).split("::")[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


def pytest_ignore_collect(collection_path, config):
    if not _named_on_command_line(config):
        return True
    return None
