"""The ``model_deployment`` and ``model_rollback`` steps: evaluate, decide, report, roll back."""

from __future__ import annotations

import base64
import html
import json
import tempfile
from pathlib import Path
from typing import Any

from mlpipeline import locations
from mlpipeline.data import datasets
from mlpipeline.deployment import registry
from mlpipeline.lake import Lake
from mlpipeline.pipeline_config import PipelineConfig, get_pipeline_config
from mlpipeline.training import tracking

ENGINEERING_ROWS = 200


class DeploymentInputError(ValueError):
    """A candidate, golden set or rollback target that cannot be used (named reason)."""


def golden_request_rows(frame, spec, limit: int) -> list[dict[str, Any]]:
    """Golden rows as the JSON request bodies the server accepts (at most ``limit``).

    Rows the server would refuse (a category the model never saw, a missing required value)
    are left out: the check times valid requests through the server's own validation.
    """
    import pandas as pd

    from mlpipeline.features import FeatureError

    rows = []
    for record in frame.to_dict(orient="records"):
        row = {}
        for feature in spec.features:
            value = record.get(feature)
            if spec.is_categorical(feature):
                row[feature] = None if pd.isna(value) else str(value)
            else:
                row[feature] = None if pd.isna(value) else float(value)
        try:
            spec.encode_row(row)
        except FeatureError:
            continue
        rows.append(row)
        if len(rows) >= limit:
            break
    return rows


def requested_candidate(
    model: str,
    triggering_events: dict | None,
    version: str | None,
    conf_candidate: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Which registered version this deployment run judges.

    The form's ``challenger_version`` (or REST conf ``candidate``) wins; otherwise the newest
    version the triggering ``model_candidate`` events announced; otherwise (a manual run with
    the field empty) the version behind alias ``challenger``. An unknown version is refused here,
    before any evaluation work.
    """
    import mlflow

    if conf_candidate and conf_candidate.get("version"):
        model, version = conf_candidate.get("model", model), str(conf_candidate["version"])
    if not version:
        events = [e for evs in (triggering_events or {}).values() for e in evs]
        announced = [e.extra for e in events if getattr(e, "extra", None) and e.extra.get("version")]
        if announced:
            return max(announced, key=lambda x: int(x["version"]))
    tracking.connect()
    client = mlflow.MlflowClient()
    if not version:
        try:
            version = client.get_model_version_by_alias(model, registry.CHALLENGER).version
        except mlflow.exceptions.MlflowException:
            raise DeploymentInputError(
                f"no challenger_version given and {model} has no alias challenger: train a model first"
            ) from None
    try:
        client.get_model_version(model, str(version))
    except mlflow.exceptions.MlflowException:
        raise DeploymentInputError(f"challenger {model} v{version} is not a registered version") from None
    return {"model": model, "version": str(version)}


def evaluate_candidate(
    candidate: dict[str, Any], cfg: PipelineConfig | None = None, lake: Lake | None = None
) -> dict[str, Any]:
    """Challenger vs champion on the golden and the recent set; decision with every rule; report written."""
    import mlflow

    from mlpipeline.evaluation.compare import RecentSet, evaluate, evaluate_recent, promotion_decision

    cfg = cfg or get_pipeline_config()
    lake = lake or Lake.from_settings()
    tracking.connect()
    client = mlflow.MlflowClient()
    model, version = candidate["model"], str(candidate["version"])
    challenger_mv = client.get_model_version(model, version)
    champion = registry.current_champion(client, model)
    golden_info, golden_manifest, golden = _load_golden(lake, cfg)
    compared = champion is not None and champion != version
    champion_mv = client.get_model_version(model, champion) if compared else None
    recent_frame, recent_info = recent_set(lake, challenger_mv, champion_mv)
    scores = _score(client, model, version, champion, golden, recent_frame, cfg)
    (challenger_scores, champion_scores), engineering = scores["golden"], scores["engineering"]
    staleness = golden_staleness(golden, recent_frame, *scores["features"], cfg)

    evaluation = evaluate(
        golden,
        challenger_scores,
        champion_scores,
        engineering,
        cfg.deployment,
        {
            "name": golden_info.name,
            "version": golden_info.version,
            "rows": len(golden),
            "content_hash": golden_manifest["content_hash"],
            "start": golden_manifest["window"]["start"],
            "end": golden_manifest["window"]["end"],
            "staleness": staleness,
        },
    )
    evaluation.recent = evaluate_recent(
        RecentSet(recent_frame, *scores["recent"], recent_info), cfg.deployment
    )
    decision = promotion_decision(
        evaluation,
        cfg.deployment,
        challenger_mv.tags.get(tracking.TAG_WINDOW_END),
        champion_mv.tags.get(tracking.TAG_WINDOW_END) if champion_mv else None,
        has_champion=champion_mv is not None,
    )
    if champion == version:
        decision = {
            "decision": "reject",
            "rules": decision["rules"],
            "reasons": [f"v{version} is already the champion"],
        }
    report = {
        "model": model,
        "challenger_version": version,
        "champion_version": champion,
        "challenger_data_window_end": challenger_mv.tags.get(tracking.TAG_WINDOW_END),
        "champion_data_window_end": champion_mv.tags.get(tracking.TAG_WINDOW_END) if champion_mv else None,
        **decision,
        "judged_on": judged_on(evaluation, cfg),
        "evaluation": evaluation.as_dict(),
    }
    urls = write_report(report, challenger_mv.run_id, lake)
    return {
        "model": model,
        "version": version,
        "expected_champion": champion,
        "decision": decision["decision"],
        "reasons": decision["reasons"],
        "primary_metric": cfg.deployment.primary_metric,
        "challenger_metric": evaluation.challenger[cfg.deployment.primary_metric],
        "champion_metric": evaluation.champion[cfg.deployment.primary_metric]
        if evaluation.champion
        else None,
        "bootstrap": evaluation.bootstrap,
        "judged_on": report["judged_on"],
        "engineering": {
            k: engineering[k]
            for k in ("single_row_p99_ms", "single_row_cpu_p99_ms", "model_bytes")
            if k in engineering
        },
        **urls,
    }


def _load_golden(lake: Lake, cfg: PipelineConfig):
    """The current golden set (info, manifest, frame), verified; :class:`DeploymentInputError` if none."""
    golden_info = datasets.current_golden(lake, cfg.golden.name)
    if golden_info is None:
        raise DeploymentInputError(
            f"no golden set {cfg.golden.name} exists: build one with the golden_dataset DAG"
        )
    try:
        golden_manifest, golden = datasets.load_golden(
            lake, cfg.golden.name, golden_info.version, verify=True
        )
    except datasets.DatasetError as err:
        raise DeploymentInputError(str(err)) from None
    return golden_info, golden_manifest, golden


def judged_on(evaluation, cfg: PipelineConfig) -> dict[str, Any]:
    """Which golden and which recent set judged the version (recorded on the version's tags)."""
    from mlpipeline.evaluation.compare import recent_decides

    recent = evaluation.recent or {}
    info = recent.get("info") or {}
    return {
        "golden": f"{evaluation.golden['name']}/{evaluation.golden['version']} "
        f"{evaluation.golden['content_hash'][:12]} ({evaluation.golden['rows']} rows)",
        "recent": (
            f"{info.get('dataset')}/ds={info.get('version')} {info.get('start')}..{info.get('end')} "
            f"{str(info.get('content_hash', ''))[:12]} ({recent.get('rows', 0)} rows)"
            if recent.get("rows")
            else f"none ({info.get('note', 'no recent rows')})"
        ),
        "decided_by": "recent set, golden guard"
        if recent_decides(evaluation, cfg.deployment)
        else "golden set",
    }


def golden_staleness(golden, recent, features: list[str], categorical: list[str], cfg: PipelineConfig):
    """Has the world left the golden set behind? Drift of the recent set against the golden set,
    judged as monitoring judges it (:func:`mlpipeline.monitoring.golden.staleness_config`).
    ``None`` without a recent set."""
    from mlpipeline.monitoring.drift import DriftInputError, check_drift
    from mlpipeline.monitoring.golden import staleness_config

    if recent is None or len(recent) == 0:
        return None
    try:
        result, _ = check_drift(recent, golden, features, categorical, staleness_config(cfg))
    except DriftInputError as err:
        return {"stale": False, "error": str(err)}
    return {
        "stale": result.dataset_drift,
        "drifted": result.drifted,
        "share": round(result.share, 4),
        "scores": {c.column: round(c.score, 4) for c in result.judged if c.score is not None},
        "against": "recent set",
    }


def recent_set(lake: Lake, challenger_mv, champion_mv) -> tuple[Any, dict[str, Any]]:
    """The recent labelled rows neither model trained on, and where they come from.

    Source: the ``recent`` split of the challenger's own dataset version (its newest
    ``dataset.holdout_days`` days, built by the same job and gate, never trained on). Days the
    champion trained on (its ``data_trained_end`` tag) are excluded and named. ``(None, info)``
    when the version holds no recent days.
    """
    import pandas as pd

    tags = challenger_mv.tags
    name, version = tags.get(tracking.TAG_DATASET), tags.get(tracking.TAG_DATASET_VERSION)
    info: dict[str, Any] = {
        "source": "challenger dataset's recent split",
        "dataset": name,
        "version": version,
    }
    if not name or not version:
        return None, {**info, "note": "the challenger records no dataset version"}
    try:
        manifest, frames = datasets.load_dataset(lake, name, version, verify=True)
    except datasets.DatasetError as err:
        raise DeploymentInputError(f"the challenger's dataset cannot judge it: {err}") from None
    frame = frames.get("recent")
    if frame is None or len(frame) == 0:
        return None, {
            **info,
            "note": f"dataset {name} ds={version} holds no recent days (dataset.holdout_days)",
        }
    info["content_hash"] = manifest["split_hashes"]["recent"]
    days = pd.to_datetime(frame["flight_date"]).dt.date.astype(str)
    trained = [tags.get(tracking.TAG_TRAINED_END) or tags.get(tracking.TAG_WINDOW_END) or ""]
    if champion_mv is not None:
        trained.append(
            champion_mv.tags.get(tracking.TAG_TRAINED_END)
            or champion_mv.tags.get(tracking.TAG_WINDOW_END)
            or ""
        )
    seen = days <= max(trained)
    excluded = sorted(set(days[seen]))
    if excluded:
        info["excluded_days"] = excluded
        info["excluded_reason"] = f"a model trained on days up to {max(trained)}"
    frame = frame.loc[~seen.to_numpy()].reset_index(drop=True)
    if len(frame) == 0:
        return None, {**info, "note": "every recent day was trained on by one of the models"}
    kept = sorted(set(days[~seen]))
    info.update({"start": kept[0], "end": kept[-1], "days": len(kept)})
    return frame, info


def _score(client, model: str, version: str, champion: str | None, golden, recent, cfg: PipelineConfig):
    """Both models' scores on the golden set and the recent set (champion: None when there is none),
    and the challenger's engineering figures (serving code path)."""
    from mlpipeline.serving.engineering import measure
    from mlpipeline.serving.model import ModelLoadError, download_model_version, load_model_dir

    with tempfile.TemporaryDirectory(prefix="mlp-eval-") as tmp:
        try:
            challenger_dir = download_model_version(model, version, Path(tmp) / "challenger")
            challenger = load_model_dir(challenger_dir, model, version)
        except ModelLoadError as err:
            raise DeploymentInputError(
                f"challenger {model} v{version} artifacts do not load: {err}"
            ) from None
        challenger_scores = challenger.score_frame(golden)
        engineering = measure(
            challenger_dir,
            golden_request_rows(golden, challenger.spec, ENGINEERING_ROWS),
            repeats=cfg.deployment.engineering_repeats,
        ).as_dict()
        champion_scores = None
        if champion is not None and champion != version:
            champion_model = load_model_dir(
                download_model_version(model, champion, Path(tmp) / "champion"), model, champion
            )
            champion_scores = champion_model.score_frame(golden)
        recent_scores = (None, None)
        if recent is not None:
            recent_scores = (
                challenger.score_frame(recent),
                champion_model.score_frame(recent) if champion_scores is not None else None,
            )
    spec = challenger.spec
    return {
        "golden": (challenger_scores, champion_scores),
        "recent": recent_scores,
        "engineering": engineering,
        "features": (list(spec.features), [f for f in spec.features if spec.is_categorical(f)]),
    }


def _calibration_png(calibration: dict[str, list[dict]]) -> str:
    from mlpipeline.training.metrics import calibration_png

    return base64.b64encode(calibration_png(calibration, "Calibration on the golden set", dpi=100)).decode()


def render_html(report: dict[str, Any]) -> str:
    """The evaluation report: decision and rules, then the golden and the recent set side by side
    (sizes, date ranges, hashes, overall metrics, bootstrap, slices), calibration, engineering."""
    ev = report["evaluation"]
    esc = html.escape
    recent = ev.get("recent") or {"info": {"note": "not evaluated"}, "rows": 0}
    info = recent.get("info") or {}
    metrics = ["roc_auc", "pr_auc", "log_loss", "brier", "ece", "base_rate", "mean_score", "rows"]

    def fmt(entry: dict | None, key: str, spec: str = ".4f") -> str:
        return format(entry[key], spec) if entry and key in entry else ""

    rows = "".join(
        f"<tr><td>{m}</td><td>{fmt(ev['challenger'], m)}</td><td>{fmt(ev.get('champion'), m)}</td>"
        f"<td>{fmt(recent.get('challenger'), m)}</td><td>{fmt(recent.get('champion'), m)}</td></tr>"
        for m in metrics
    )

    def boot_text(boot: dict | None) -> str:
        if not boot:
            return "—"
        return (
            f"{esc(boot['metric'])}: challenger − champion = {boot['difference']:+.4f}, 95% CI "
            f"[{boot['ci_low']:+.4f}, {boot['ci_high']:+.4f}] ({boot['resamples']} paired resamples, seed {boot['seed']})"
        )

    golden = ev["golden"]
    golden_range = f"{golden.get('start', '?')}..{golden.get('end', '?')}"
    recent_range = f"{info['start']}..{info['end']}" if info.get("start") else "—"
    excluded = ", ".join(info.get("excluded_days") or []) or "none"
    sets = (
        "<table><tr><th></th><th>golden set</th><th>recent set</th></tr>"
        f"<tr><td>source</td><td>{esc(golden['name'])} {esc(golden['version'])}</td>"
        f"<td>{esc(str(info.get('source', '')))} {esc(str(info.get('dataset', '')))} ds={esc(str(info.get('version', '')))}</td></tr>"
        f"<tr><td>days</td><td>{esc(golden_range)}</td><td>{esc(recent_range)}</td></tr>"
        f"<tr><td>rows</td><td>{golden['rows']}</td><td>{recent.get('rows', 0)}</td></tr>"
        f"<tr><td>content hash</td><td>{esc(golden['content_hash'][:16])}</td><td>{esc(str(info.get('content_hash', ''))[:16])}</td></tr>"
        f"<tr><td>bootstrap</td><td>{boot_text(ev.get('bootstrap'))}</td><td>{boot_text(recent.get('bootstrap'))}</td></tr>"
        f"<tr><td>days excluded (trained on)</td><td></td><td>{esc(excluded)}</td></tr>"
        f"<tr><td>note</td><td></td><td>{esc(str(info.get('note', '')))}</td></tr></table>"
    )
    rules = "".join(
        f"<tr class='{'ok' if r['passed'] else 'bad'}'><td>{esc(r['rule'])}</td><td>{'pass' if r['passed'] else 'FAIL'}</td>"
        f"<td>{esc(r['detail'])}</td></tr>"
        for r in report["rules"]
    )
    slices = "".join(
        f"<tr><td>{where}</td><td>{esc(s['slice'])}</td><td>{esc(s['value'])}</td><td>{s['rows']}</td>"
        f"<td>{s['challenger']:.4f}</td><td>{fmt(s, 'champion')}</td><td>{fmt(s, 'change', '+.4f')}</td></tr>"
        for where, table in (("golden", ev["slices"]), ("recent", recent.get("slices") or []))
        for s in table
    )
    eng = ev["engineering"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Evaluation {esc(report["model"])} v{esc(report["challenger_version"])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}
.ok td:nth-child(2){{color:green}}.bad td:nth-child(2){{color:#c00;font-weight:bold}}</style></head><body>
<h1>{esc(report["model"])}: challenger v{esc(report["challenger_version"])} vs champion {esc(str(report["champion_version"] or "—"))}</h1>
<h2>Decision: {esc(report["decision"].upper())}</h2>
<table><tr><th>rule</th><th>outcome</th><th>detail</th></tr>{rules}</table>
<h2>The two sets</h2>{sets}
<h2>Overall</h2>
<table><tr><th>metric</th><th>golden: challenger</th><th>golden: champion</th><th>recent: challenger</th><th>recent: champion</th></tr>{rows}</table>
<h2>Slices ({esc(ev["primary_metric"])})</h2>
<table><tr><th>set</th><th>slice</th><th>value</th><th>rows</th><th>challenger</th><th>champion</th><th>change</th></tr>{slices}</table>
<h2>Calibration (golden set)</h2><img alt="calibration" src="data:image/png;base64,{_calibration_png(ev["calibration"])}">
<h2>Engineering (serving code path)</h2>
<p>load {eng["load_seconds"]:.3f} s; batch of {eng["batch_rows"]} rows {eng["batch_seconds"] * 1000:.1f} ms;
single-row p50 {eng["single_row_p50_ms"]:.3f} ms, p99 {eng["single_row_p99_ms"]:.3f} ms wall, {eng.get("single_row_cpu_p99_ms", float("nan")):.3f} ms CPU; model {eng["model_bytes"]:,} bytes</p>
<p>Data window end: challenger {esc(str(report["challenger_data_window_end"]))}, champion {esc(str(report["champion_data_window_end"]))}</p>
</body></html>"""


def write_report(report: dict[str, Any], run_id: str, lake: Lake) -> dict[str, str]:
    """Store the report (HTML + JSON) in the lake and on the challenger's MLflow run."""
    import mlflow

    base = locations.evaluation_report_dir(report["model"], report["challenger_version"])
    page = render_html(report)
    lake.write_bytes(f"{base}/report.html", page.encode())
    lake.write_bytes(f"{base}/report.json", json.dumps(report, indent=2, default=str).encode())
    client = mlflow.MlflowClient()
    with tempfile.TemporaryDirectory(prefix="mlp-report-") as tmp:
        (Path(tmp) / "evaluation_report.html").write_text(page)
        (Path(tmp) / "evaluation_report.json").write_text(json.dumps(report, indent=2, default=str))
        client.log_artifacts(run_id, tmp, artifact_path="deployment")
    run = client.get_run(run_id)
    return {
        "report_path": lake.uri(f"{base}/report.html"),
        "report_url": f"{tracking.run_url(run_id, run.info.experiment_id)}/artifacts/deployment/evaluation_report.html",
    }


def reject(evaluated: dict[str, Any], actor: str, lake: Lake | None = None) -> dict[str, Any]:
    """Record a rejection on the version (tags) and in the audit trail; the champion is untouched."""
    lake = lake or Lake.from_settings()
    tracking.connect()
    registry.tag_decision(
        evaluated["model"], evaluated["version"], "reject", evaluated["reasons"], evaluated.get("judged_on")
    )
    registry.append_history(
        lake,
        evaluated["model"],
        {
            "time": registry._now(),
            "model": evaluated["model"],
            "action": "reject",
            "from_version": evaluated["expected_champion"],
            "to_version": evaluated["version"],
            "reasons": evaluated["reasons"],
            "actor": actor,
            "metrics": {
                "challenger": evaluated["challenger_metric"],
                "champion": evaluated["champion_metric"],
            },
        },
    )
    return {
        "model": evaluated["model"],
        "version": evaluated["version"],
        "decision": "reject",
        "reasons": evaluated["reasons"],
    }


def promote(evaluated: dict[str, Any], actor: str, reload: bool = True) -> dict[str, Any]:
    tracking.connect()
    moved = registry.move_champion(
        evaluated["model"],
        evaluated["version"],
        evaluated["expected_champion"],
        action="promote",
        reasons=evaluated["reasons"] or ["all rules passed"],
        actor=actor,
        metrics={"challenger": evaluated["challenger_metric"], "champion": evaluated["champion_metric"]},
        reload=reload,
    )
    registry.tag_decision(
        evaluated["model"], evaluated["version"], "promote", evaluated["reasons"], evaluated.get("judged_on")
    )
    return moved


def force_promote(
    model: str, version: str, reason: str, actor: str, reload: bool = True, allowed: bool | None = None
) -> dict[str, Any]:
    """Make ``version`` champion through the real promotion path, skipping the evaluation gate.

    Test and demo only (``MLP_ALLOW_FORCE_PROMOTE=true``, or ``allowed=True`` from the demo's
    scenario step): it is how the monitoring scenarios put a deliberately degraded model into
    production. Refused otherwise.
    """
    import mlflow

    from mlpipeline.settings import get_settings

    if not (get_settings().allow_force_promote if allowed is None else allowed):
        raise DeploymentInputError(
            "force_promote is disabled: it bypasses the evaluation gate and exists for tests and the demo "
            "(MLP_ALLOW_FORCE_PROMOTE=true)"
        )
    tracking.connect()
    current = registry.current_champion(mlflow.MlflowClient(), model)
    reasons = [f"FORCED without passing evaluation: {reason}"]
    moved = registry.move_champion(
        model, str(version), current, action="promote", reasons=reasons, actor=actor, reload=reload
    )
    registry.tag_decision(model, str(version), "promote", reasons)
    return moved


# --------------------------------------------------------------------------------------
# Rollback
# --------------------------------------------------------------------------------------
def rollback_target(model: str, target: str | None, lake: Lake | None = None) -> dict[str, Any]:
    """Validate a rollback target (default: the champion before the current one)."""
    import mlflow

    lake = lake or Lake.from_settings()
    tracking.connect()
    client = mlflow.MlflowClient()
    current = registry.current_champion(client, model)
    history = registry.read_history(lake, model)
    moves = [r for r in history if r["action"] in ("promote", "rollback")]
    if not target:
        into_current = [r for r in moves if r["to_version"] == current and r.get("from_version")]
        if not into_current:
            raise DeploymentInputError(f"no earlier champion of {model} in the audit trail to roll back to")
        target = str(into_current[-1]["from_version"])
    target = str(target)
    try:
        mv = client.get_model_version(model, target)
    except mlflow.exceptions.MlflowException:
        raise DeploymentInputError(f"rollback target {model} v{target} does not exist") from None
    was_champion = any(str(r["to_version"]) == target for r in moves)
    if not was_champion and mv.tags.get(registry.TAG_DECISION) != "promote":
        decision = mv.tags.get(registry.TAG_DECISION) or "never evaluated"
        raise DeploymentInputError(
            f"rollback target {model} v{target} was never champion and did not pass evaluation ({decision}: "
            f"{mv.tags.get(registry.TAG_REASONS, '')})"
        )
    _check_loads_and_scores(model, target, lake)
    return {"model": model, "target": target, "current": current, "noop": current == target}


def _check_loads_and_scores(model: str, version: str, lake: Lake) -> None:
    from mlpipeline.serving.model import ModelLoadError, load_model_version

    cfg = get_pipeline_config()
    try:
        loaded = load_model_version(model, version)
    except ModelLoadError as err:
        raise DeploymentInputError(f"rollback target {model} v{version} does not load: {err}") from None
    golden = datasets.current_golden(lake, cfg.golden.name)
    if golden is not None:
        _, frame = datasets.load_golden(lake, cfg.golden.name, golden.version)
        import numpy as np

        scores = loaded.score_frame(frame.head(500))
        if not np.all(np.isfinite(scores)):
            raise DeploymentInputError(f"rollback target {model} v{version} returns non-finite scores")


def rollback(
    target: dict[str, Any], reason: str, actor: str, dry_run: bool = False, reload: bool = True
) -> dict[str, Any]:
    if not reason or not reason.strip():
        raise DeploymentInputError("a rollback needs a reason (who asked, what went wrong)")
    if target["noop"]:
        return {**target, "result": f"v{target['target']} is already the champion: nothing to do"}
    if dry_run:
        return {
            **target,
            "result": f"dry run: would move champion v{target['current']} -> v{target['target']}",
        }
    moved = registry.move_champion(
        target["model"],
        target["target"],
        target["current"],
        action="rollback",
        reasons=[reason],
        actor=actor,
        reload=reload,
    )
    return {**target, **moved, "result": f"champion rolled back v{target['current']} -> v{target['target']}"}


def settings_actor(dag_id: str, run_id: str, user: str | None = None) -> str:
    """Who moved production, for the audit trail: the DAG run and, when a person acted, who."""
    return f"airflow:{dag_id}/{run_id}" + (f" by {user}" if user else "")
