"""Fixtures shared by the unit tests."""

import pytest


@pytest.fixture
def unreachable_jetson(tmp_path):
    """A jetson config that fails fast: nothing listens on port 9, and known_hosts is empty."""
    paramiko = pytest.importorskip("paramiko")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    key_file = tmp_path / "id_rsa"
    paramiko.RSAKey.generate(1024).write_private_key_file(str(key_file))
    return {
        "key_file": str(key_file),
        "backend": "jetson",
        "host": "127.0.0.1",
        "port": 9,
        "connect_timeout_s": 2,
        "known_hosts": str(known_hosts),
        "cache_dir": str(tmp_path / "cache"),
    }
