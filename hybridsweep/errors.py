"""The exception types for user mistakes (bad settings, missing files) and for devices that cannot measure.

`python -m hybridsweep` prints them as a single line and exits non-zero: a user mistake never shows a traceback.
"""


class UserError(Exception):
    """A problem the user can fix; the message says which setting and what to do."""


class DeviceUnavailable(UserError):
    """The measuring device cannot be used right now: it does not answer, or the run on it failed.

    The only error a latency fallback (`latency.fallback`) may absorb, so a sweep keeps going while a Jetson is
    off or a GPU is missing. A configuration mistake (a missing known_hosts or key file, a refused key, a wrong
    trtexec path) stays a plain UserError and ends the run even with a fallback: retrying cannot fix it, and
    silently predicting instead would hide it. Without a fallback both end the run the same way.
    """


def first_line(exc: BaseException) -> str:
    """An exception's first line (at most 300 characters): what a one-line message can quote of a library's error."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
