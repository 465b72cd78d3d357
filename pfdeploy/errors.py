"""The one exception family for problems the user can fix."""


class PfdeployError(Exception):
    """A user-fixable problem: unknown model, bad checkpoint, missing library, wrong input.

    The message is one line that names the problem and the fix; the CLI prints it without a
    traceback and exits non-zero. Anything that is not a PfdeployError is a bug.
    """

    exit_code = 1


class MissingDependencyError(PfdeployError):
    """An optional library (TensorRT, cuda-python, matplotlib, ...) or a GPU is not available."""

    exit_code = 2


def shown(value) -> str:
    """`value` as a message shows it: its repr, cut to 60 characters (a hostile value can be megabytes)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
