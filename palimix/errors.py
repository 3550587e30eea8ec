"""Errors that palimix raises for bad user input.

The CLI prints any `PalimixError` as one line and exits with code 2; library users
catch them by the specific class (they also subclass the builtin that fits).
"""


class PalimixError(Exception):
    """Base class: a problem with what the user asked for, not a bug in palimix."""


class UsageError(PalimixError, ValueError):
    """A bad flag, name or value."""


class CheckpointMismatchError(PalimixError, ValueError):
    """A checkpoint's parameters do not fit the model (missing names, other shapes,
    another number of blocks)."""


class UnknownLanguageError(PalimixError, KeyError):
    """A language code that is not in palimix's languages table."""

    def __str__(self):  # KeyError would repr() the message.
        return str(self.args[0]) if self.args else ""


class UnknownNameError(PalimixError, KeyError):
    """A task, mixture, prompt kind, model config... that is not registered."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


def close_matches_hint(name: str, candidates, n: int = 3) -> str:
    """' Did you mean: a, b?' for the closest candidates, or '' if none is close."""
    import difflib

    matches = difflib.get_close_matches(str(name), list(candidates), n=n, cutoff=0.6)
    return f" Did you mean: {', '.join(matches)}?" if matches else ""
