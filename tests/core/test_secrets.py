import os
import stat

import pytest

from deepfeed.core.platform.secrets import AUDIT_KEY, USER_SALT, MissingSecret, ensure_secret, load_secret


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in ("DEEPFEED_USER_SALT", "DEEPFEED_USER_SALT_FILE", "DEEPFEED_AUDIT_KEY", "DEEPFEED_AUDIT_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DEEPFEED_HOME", str(tmp_path / "home"))


def test_the_demo_secret_is_private_random_and_stable(tmp_path):
    path = ensure_secret(USER_SALT)
    assert path == tmp_path / "home" / "secrets" / "user_salt"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    value = load_secret(USER_SALT)
    assert len(value) == 64 and ensure_secret(USER_SALT) == path and load_secret(USER_SALT) == value
    assert load_secret(AUDIT_KEY, required=False) is None
    assert ensure_secret(AUDIT_KEY) and load_secret(AUDIT_KEY) != value


def test_order_and_refusals(tmp_path, monkeypatch):
    with pytest.raises(MissingSecret, match="DEEPFEED_USER_SALT_FILE"):
        load_secret(USER_SALT)
    monkeypatch.setenv("DEEPFEED_USER_SALT", "short")
    with pytest.raises(MissingSecret, match="shorter"):
        load_secret(USER_SALT)
    monkeypatch.setenv("DEEPFEED_USER_SALT", "x" * 20)
    assert load_secret(USER_SALT) == "x" * 20
    monkeypatch.delenv("DEEPFEED_USER_SALT")
    secret = tmp_path / "mounted"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT, 0o640)
    os.write(fd, b"y" * 32 + b"\n")
    os.close(fd)
    monkeypatch.setenv("DEEPFEED_USER_SALT_FILE", str(secret))
    with pytest.raises(MissingSecret, match="chmod 600"):
        load_secret(USER_SALT)
    secret.chmod(0o600)
    assert load_secret(USER_SALT) == "y" * 32
    monkeypatch.setenv("DEEPFEED_USER_SALT_FILE", str(tmp_path / "absent"))
    with pytest.raises(MissingSecret, match="not a file"):
        load_secret(USER_SALT)
