"""Every URL form a password can take is hidden, and nothing else in the text changes."""

import pytest

from hybridsweep.redaction import redact, redact_tree


@pytest.mark.parametrize(
    "typed,shown",
    [
        ("postgresql+psycopg2://hs:PW@127.0.0.1:5432/db", "postgresql+psycopg2://hs:***@127.0.0.1:5432/db"),
        ("postgresql://u:p@ss@h/x", "postgresql://u:***@h/x"),  # an '@' in the password, not %40-encoded
        ("postgresql://:pw@h/x", "postgresql://:***@h/x"),  # no user name
        ("postgresql://h/x?sslmode=require&password=pw", "postgresql://h/x?sslmode=require&password=***"),
        ("postgresql://h/x?password=pw&sslmode=require", "postgresql://h/x?password=***&sslmode=require"),
        ("http://user:token@mlflow.example.com:5000/", "http://user:***@mlflow.example.com:5000/"),
        ("tracking.uri=postgresql://u:pw@h/x task=search", "tracking.uri=postgresql://u:***@h/x task=search"),
    ],
)
def test_passwords_are_hidden_in_every_form(typed, shown):
    assert redact(typed) == shown
    assert "pw" not in redact(typed).replace("psycopg2", "").replace("postgresql", "")


@pytest.mark.parametrize(
    "text",
    ["sqlite:///mlflow.db", "postgresql://127.0.0.1:5432/db", "http://host:5000/a@b", "study.journal", "lr=0.01"],
)
def test_text_without_a_password_is_unchanged(text):
    assert redact(text) == text


def test_a_config_tree_is_redacted_everywhere():
    tree = {"tracking": {"uri": "postgresql://u:pw@h/x"}, "args": ["a=postgresql://u:pw@h/y", 3], "n": None}
    assert redact_tree(tree) == {
        "tracking": {"uri": "postgresql://u:***@h/x"}, "args": ["a=postgresql://u:***@h/y", 3], "n": None
    }
