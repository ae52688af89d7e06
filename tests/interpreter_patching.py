"""Test-speed shim for Triton's interpreter: patch triton.language once per launch, not once per
call of a @triton.jit helper.

Under ``TRITON_INTERPRET=1`` every call of a jit helper inside a kernel (``load_tile``,
``tl.zeros``, ...) re-runs ``_patch_lang``, which walks ``triton.language`` with
``inspect.getmembers`` to wrap its builtins: about 1.7 ms a call, two thirds of a small launch's
interpreted time here.  Within one launch a second patch of the same modules changes nothing
(the builtins are wrapped already, and the rest is re-set to equivalent closures over the one
interpreter builder), so this skips it; a helper whose module sees a language module the launch
has not patched yet (``tl.core``, in triton's own ``standard.py``) is still patched.  Kernel
semantics are untouched: only repeated work goes.  If triton's internals change shape, the
shim does nothing and the tests are merely slower."""
import triton.language as tl


def install():
    try:
        from triton.runtime import interpreter
        original = interpreter._patch_lang
        interpreter.InterpretedFunction.__call__   # the helper-call path this relies on
    except (ImportError, AttributeError):
        return
    if getattr(original, "_once_per_launch", False):
        return
    covered = []   # ids of the language modules the running launch has patched

    def patch_lang(fn):
        langs = {id(v) for v in fn.__globals__.values() if v is tl or v is tl.core}
        if covered and langs <= covered[0]:
            return None   # a helper call: its caller discards the scope, as it does the real one
        scope = original(fn)
        if covered:
            covered[0] |= langs
            return scope
        covered.append(langs)   # the launch itself: its restore ends the launch
        restore = scope.restore

        def restore_and_forget():
            covered.clear()
            restore()
        scope.restore = restore_and_forget
        return scope

    patch_lang._once_per_launch = True
    interpreter._patch_lang = patch_lang
