"""Errors a user can cause. The CLI turns any of these into one line on stderr and exit code 2."""


class NanoifyError(Exception):
    """Base class: the message says what is wrong and what to do."""


class DataError(NanoifyError):
    """Missing data, unknown column or label, empty split, NaN in calibration data."""


class ModelError(NanoifyError):
    """A model that cannot be found, loaded or combined with another (label maps, widths)."""


class ConfigError(NanoifyError):
    """An option or recipe value that does not make sense."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (a third-party trace's headline), or its type's name."""
    msg = str(e).strip()
    return msg.splitlines()[0][:limit] if msg else type(e).__name__
