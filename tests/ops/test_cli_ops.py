"""The CLI a new user meets: help for every command, --version, a run-config template,
policy errors as one line, and API keys created from the command line."""

import subprocess
import sys

import pytest
import yaml

from deepfeed.cli import build_parser, main
from deepfeed.core.platform.access import FEEDBACK_SUBMIT, AccessPolicy, PolicyError
from deepfeed.core.platform.access_keys import add_key, check_policy_file


def _subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action, parser.format_help()


def test_help_lists_every_command_with_its_help_and_version(capsys):
    action, text = _subcommands()
    assert len(action.choices) >= 12
    helps = {choice.dest: choice.help for choice in action._choices_actions}
    assert set(helps) == set(action.choices) and all(helps.values())
    for name in action.choices:
        assert f"    {name}" in text, name
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("deepfeed ")


def test_run_config_template_is_valid_config_for_the_job(capsys):
    from deepfeed.definitions import defs

    assert main(["run-config"]) == 0
    text = capsys.readouterr().out
    config = yaml.safe_load(text)
    assert config["ops"]["finetuned_model"]["config"]["max_steps"] == 30
    assert "# Optimizer steps." in text
    job = defs.resolve_job_def("full_chain_job")
    assert job.run_config_schema.config_type  # the template validates against the job's schema:
    from dagster._config import process_config

    assert process_config(job.run_config_schema.config_type, config).success
    assert main(["run-config", "--job", "nope"]) == 2


def test_add_key_creates_a_policy_the_server_accepts(tmp_path, capsys):
    policy = tmp_path / "access_policy.yaml"
    assert main(["access", "add-key", "--principal", "alice", "--role", "annotator", "--policy", str(policy)]) == 0
    key = capsys.readouterr().out.strip()
    assert key and key not in policy.read_text()
    assert (policy.stat().st_mode & 0o777) == 0o600
    loaded = AccessPolicy.from_file(policy)
    assert loaded.decide(key, FEEDBACK_SUBMIT, "public", "deepfeed").allowed
    assert not loaded.decide("wrong", FEEDBACK_SUBMIT, "public", "deepfeed").allowed
    second = add_key(policy, "bob", "operator")
    loaded = AccessPolicy.from_file(policy)
    assert loaded.decide(key, FEEDBACK_SUBMIT, "public", "deepfeed").principal == "alice"
    assert loaded.decide(second, FEEDBACK_SUBMIT, "public", "deepfeed").principal == "bob"
    assert main(["access", "add-key", "--principal", "eve", "--role", "root", "--policy", str(policy)]) == 2
    assert "role 'root' is not defined" in capsys.readouterr().err


def test_broken_policy_yaml_is_one_line(tmp_path):
    policy = tmp_path / "access_policy.yaml"
    policy.write_text("roles:\n  annotator: {permissions: [feedback:submit]\nkeys: []\n")
    with pytest.raises(PolicyError, match=r"not valid YAML: .*\(line \d+, column \d+\)"):
        check_policy_file(policy)
    before = policy.read_text()
    with pytest.raises(PolicyError):
        add_key(policy, "alice", "annotator")
    assert policy.read_text() == before  # a bad file is left as it was
    done = subprocess.run(
        [sys.executable, "-m", "deepfeed.cli", "serve", "--policy", str(policy)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "not valid YAML" in done.stderr and "Traceback" not in done.stderr
