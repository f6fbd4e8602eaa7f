"""`deepfeed serve`: the inference server under uvicorn.

Settings travel to uvicorn's worker processes as JSON in an environment variable and the
app is built by a factory, because uvicorn starts several workers only from an import
string, not from an app object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the app pulls in torch and fastapi: not for every `deepfeed --help`
    from deepfeed.serve.app import ServeSettings

SETTINGS_ENV = "DEEPFEED_SERVE_SETTINGS"


def settings_to_env(settings: ServeSettings) -> str:
    # The salt stays out of the environment (readable in /proc by the same user, copied into
    # crash reports): each worker reads it from the secret store itself.
    return json.dumps(
        {**asdict(settings), "salt": "", "home": str(settings.home), "policy_path": str(settings.policy_path or "")}
    )


def settings_from_env() -> ServeSettings:
    from deepfeed.serve.app import ServeSettings

    raw = json.loads(os.environ[SETTINGS_ENV])
    raw["home"] = Path(raw["home"])
    raw["policy_path"] = Path(raw["policy_path"]) if raw.get("policy_path") else None
    return ServeSettings(**raw)


def app_factory():
    from deepfeed.serve.app import create_app
    from deepfeed.serve.parent_watch import exit_with_parent

    exit_with_parent()  # a worker of --workers N must not outlive a killed supervisor (it holds the port)
    return create_app(settings_from_env())


def default_policy_path(home: Path) -> Path | None:
    for name in ("access_policy.yaml", "access_policy.yml", "access_policy.json"):
        if (home / name).exists():
            return home / name
    return None


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    from deepfeed.core.platform.home import deepfeed_home
    from deepfeed.core.platform.home_move import settle_home
    from deepfeed.serve.app import ServeSettings
    from deepfeed.settings import default_mlflow_uri

    home = deepfeed_home()
    policy = Path(args.policy) if args.policy else default_policy_path(home)
    tracking_uri = args.tracking_uri or default_mlflow_uri()
    settle_home(home, tracking_uri)  # a moved home serves its own models (docs/operations.md)
    return ServeSettings(
        tracking_uri=tracking_uri,
        model_name=args.model_name,
        runtime=args.runtime,
        ab_test=not args.no_ab_test,
        split=args.split,
        max_new_tokens=args.max_new_tokens,
        poll_seconds=args.poll_seconds,
        policy_path=policy,
        home=home,
        embedding_summary=not args.no_embedding_summary,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from deepfeed.core.platform.access import PolicyError
    from deepfeed.core.platform.access_keys import check_policy_file
    from deepfeed.core.platform.secrets import USER_SALT, MissingSecret, load_secret

    settings = settings_from_args(args)
    if settings.policy_path is not None:
        try:  # checked here, once, so a bad file is one line rather than a traceback from each worker
            check_policy_file(settings.policy_path)
        except PolicyError as exc:
            print(f"deepfeed serve: {exc}", file=sys.stderr)
            return 2
    try:
        load_secret(USER_SALT, settings.home)
    except MissingSecret as exc:
        print(f"deepfeed serve: refusing to start: {exc}", file=sys.stderr, flush=True)
        return 2
    if settings.policy_path is None:
        print(
            "deepfeed serve: no access policy (--policy or $DEEPFEED_HOME/access_policy.yaml): "
            "POST /generate, /feedback and /admin/reload will refuse everyone",
            flush=True,
        )
    os.environ[SETTINGS_ENV] = settings_to_env(settings)
    uvicorn.run(
        "deepfeed.serve.cli:app_factory",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
    )
    return 0


def add_serve_parser(commands) -> None:
    serve = commands.add_parser("serve", help="serve the champion (and the challenger of an A/B test) over HTTP")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (each loads the models)")
    serve.add_argument(
        "--runtime",
        choices=("onnx_int8", "torch"),
        default="onnx_int8",
        help="onnx_int8 uses the version's compressed_model artifact, torch when there is none",
    )
    serve.add_argument(
        "--tracking-uri", default=None, help="MLflow registry (default $MLFLOW_TRACKING_URI or the embedded one)"
    )
    serve.add_argument("--model-name", default="deepfeed", help="registered model whose aliases are served")
    serve.add_argument("--split", type=float, default=0.5, help="challenger's share of users during an A/B test")
    serve.add_argument(
        "--no-ab-test", action="store_true", help="serve only the champion even when a challenger exists"
    )
    serve.add_argument("--max-new-tokens", type=int, default=32)
    serve.add_argument(
        "--poll-seconds", type=float, default=10.0, help="how often the registry aliases are re-read (0 = never)"
    )
    serve.add_argument(
        "--policy", default=None, help="access policy file (JSON/YAML; default $DEEPFEED_HOME/access_policy.*)"
    )
    serve.add_argument(
        "--no-embedding-summary",
        action="store_true",
        help="log only the cheap text features of prompts, not their MiniLM embedding summary",
    )
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(func=cmd_serve)
