"""Test-speed shim for Triton's interpreter: patch triton.language once per launch, not once per
call of a @triton.jit helper.

Under ``TRITON_INTERPRET=1`` every call of a jit helper inside a kernel (``load_tile``,
``tl.zeros``, ...) re-runs ``_patch_lang``, which walks ``triton.language`` with
``inspect.getmembers`` to wrap its builtins: about 1.7 ms a call, two thirds of a small launch's
interpreted time here.  Within one launch a second patch of the same modules changes nothing
(the builtins are wrapped already, and the rest is re-set to equivalent closures over the one
interpreter builder), so this skips it; a helper whose module sees a language module the launch
has not patched yet (``tl.core``, in triton's own ``standard.py``) is still patched, and so is
anything outside a launch (a helper called from Python).  Kernel semantics are untouched: only
repeated work goes.  Where triton's internals differ from what this expects, nothing is
installed and the tests are merely slower."""
import triton.language as tl


class _NoScope:
    """What a skipped patch returns: a helper call's scope is never restored, but a caller that
    does restore it finds nothing to undo."""

    @staticmethod
    def restore():
        pass


def install():
    try:
        from triton.runtime import interpreter
        original = interpreter._patch_lang
        executor_call = interpreter.GridExecutor.__call__
        interpreter.InterpretedFunction.__call__   # the helper-call path this relies on
    except (ImportError, AttributeError):
        return
    if getattr(original, "_once_per_launch", False):
        return
    launches = []   # per running launch: the ids of the language modules it has patched

    def launch(self, *args, **kwargs):
        launches.append(set())
        try:
            return executor_call(self, *args, **kwargs)
        finally:
            launches.pop()

    def patch_lang(fn):
        langs = {id(v) for v in fn.__globals__.values() if v is tl or v is tl.core}
        if launches and langs and langs <= launches[-1]:
            return _NoScope
        scope = original(fn)
        if launches:
            launches[-1] |= langs
        return scope

    patch_lang._once_per_launch = True
    interpreter._patch_lang = patch_lang
    interpreter.GridExecutor.__call__ = launch
