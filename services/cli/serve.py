"""``magsrl serve SERVICE``: runs one service in the foreground."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

# service -> (module with create_app, settings class path). Imported lazily.
SERVICES: dict[str, tuple[str, str]] = {
    "magnifier": ("magsrl.magnifier.app", "magsrl.magnifier.config:MagnifierSettings"),
    "policy": ("magsrl.policy.app", "magsrl.policy.config:PolicySettings"),
    "judge": ("magsrl.judge.app", "magsrl.judge.config:JudgeSettings"),
    "trainer": ("magsrl.trainer.app", "magsrl.trainer.config:TrainerSettings"),
    # No HTTP server: it takes jobs from Redis (see magsrl.trainer.worker).
    "rollout-worker": ("magsrl.trainer.worker_main", "magsrl.trainer.config:WorkerSettings"),
}


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "serve", help="run one service", description="Run one magsrl service in the foreground."
    )
    parser.add_argument("service", choices=sorted(SERVICES), help="which service to run")
    parser.add_argument(
        "--host", default=None, help="interface (default: MAGSRL_HOST or 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=None, help="port (default: the service's)")
    parser.set_defaults(func=run)


def load_settings(service: str, **overrides: Any) -> Any:
    module_name, _, cls_name = SERVICES[service][1].partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(**{k: v for k, v in overrides.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    from magsrl.common.server import serve

    settings = load_settings(args.service, host=args.host, port=args.port)
    module = importlib.import_module(SERVICES[args.service][0])
    if args.service == "rollout-worker":
        module.run_worker(settings)
        return 0
    app = module.create_app(settings)
    serve(app, settings.host, settings.port, settings.log_level)
    return 0
