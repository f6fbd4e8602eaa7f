from __future__ import annotations

from deepfeed.cli import build_parser
from deepfeed.serve.cli import SETTINGS_ENV, settings_from_args, settings_from_env, settings_to_env


def test_serve_arguments_become_settings_and_survive_the_env(deepfeed_env, monkeypatch):
    (deepfeed_env / "access_policy.yaml").write_text("roles: {}\n")
    args = build_parser().parse_args(
        ["serve", "--port", "9001", "--runtime", "torch", "--split", "0.2", "--no-ab-test", "--poll-seconds", "3"]
    )
    settings = settings_from_args(args)
    assert (settings.runtime, settings.split, settings.ab_test, settings.poll_seconds) == ("torch", 0.2, False, 3.0)
    assert settings.policy_path == deepfeed_env / "access_policy.yaml"
    assert settings.tracking_uri == f"sqlite:///{deepfeed_env / 'mlflow.db'}"
    assert settings.feedback_root == deepfeed_env / "feedback"
    monkeypatch.setenv(SETTINGS_ENV, settings_to_env(settings))
    assert settings_from_env() == settings
