"""How users choose a backend: no keyword (the default resolution), ``FASTCELLS_BACKEND``,
``fastcells.use_backend``, or the ``backend=`` keyword.  Integration tests run on each."""
import contextlib

import pytest

import fastcells

# On CPU the default resolution is torch's own kernels in eager calls and the reference math
# under torch.compile; FASTCELLS_BACKEND=triton runs the kernels through Triton's interpreter,
# which is what the default gives a GPU user.
ROUTES = ["default", "env-triton", "use_backend-reference", "kw-triton", "kw-reference"]


@contextlib.contextmanager
def user_route(route, monkeypatch):
    """Enter ``route``; yields the constructor keywords it takes ({} or {'backend': name})."""
    how, _, name = route.partition("-")
    monkeypatch.delenv("FASTCELLS_BACKEND", raising=False)
    if how == "default":
        yield {}
    elif how == "env":
        monkeypatch.setenv("FASTCELLS_BACKEND", name)
        yield {}
    elif how == "use_backend":
        with fastcells.use_backend(name):
            yield {}
    elif how == "kw":
        yield {"backend": name}
    else:
        raise ValueError(f"unknown route {route!r}")


@pytest.fixture(params=ROUTES)
def route(request, monkeypatch):
    """A test run on each route: yields the module's ``backend=`` keyword (None, or the name),
    with the environment and ``use_backend`` of the route in force."""
    with user_route(request.param, monkeypatch) as kw:
        yield kw.get("backend")
