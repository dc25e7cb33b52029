"""Passwords out of everything the user did not mean to publish: printed lines, MLflow params and artefacts,
Optuna study attributes (optuna-dashboard shows them), error messages.

Our own parser, not SQLAlchemy's `URL.render_as_string(hide_password=True)`: that one stops a password at its
first '@' (so `u:p@ss@host` shows `ss@host`) and leaves `?password=...` in the query as it is. Hydra's own
`.hydra/overrides.yaml` still records the command line as typed: keep passwords in PGPASSWORD (libpq) or
MLFLOW_TRACKING_PASSWORD (MLflow servers) instead (README, "Secrets").
"""

import re
from typing import Any

HIDDEN = "***"
# scheme://user:password@host: the password runs to the authority's last '@' (a typed '@' is not always %40)
_USERINFO = re.compile(r"(?P<head>[A-Za-z][\w+.\-]*://[^:/@\s]*):(?P<password>[^/\s]*)@(?P<host>[^@/\s]*)")
_QUERY = re.compile(r"(?i)(?P<key>[?&;](?:password|passwd|pwd|pass|token|secret|api_key|apikey)=)[^&;\s'\"]*")


def redact(text: Any) -> str:
    """`text` with every URL password and secret query value replaced by ***."""
    text = _USERINFO.sub(lambda m: f"{m['head']}:{HIDDEN}@{m['host']}", str(text))
    return _QUERY.sub(lambda m: m["key"] + HIDDEN, text)


def redact_tree(value: Any) -> Any:
    """A plain config (dicts, lists, scalars) with `redact` applied to every string in it."""
    if isinstance(value, dict):
        return {k: redact_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_tree(v) for v in value]
    return redact(value) if isinstance(value, str) else value
