"""The one exception type for user mistakes (bad settings, missing files, unreachable services).

`python -m hybridsweep` prints it as a single line and exits non-zero: a user mistake never shows a traceback.
"""


class UserError(Exception):
    """A problem the user can fix; the message says which setting and what to do."""
