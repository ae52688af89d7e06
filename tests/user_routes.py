"""How users choose a backend: no keyword (the default resolution), ``FASTCELLS_BACKEND``,
``fastcells.use_backend``, or the ``backend=`` keyword.  Integration tests run on each."""
import contextlib

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
