"""The daily decision: healthy, retrain, rollback or alarm only; and the alarms behind it.

Rules, in order:

1. **rollback**: the champion itself breached quality (on delayed labels) or engineering
   budgets, it was *promoted* less than ``rollback_window_days`` ago, and the audit trail
   names the champion it replaced. Target: that previous champion.
2. **alarm_only** for the same breach when no safe automatic action exists (promoted long
   ago, restored by a rollback already, or no earlier champion): a person decides.
3. **retrain**: the inputs moved (share of drifted columns >= ``drift_share_threshold``):
   a fresh dataset and training for the newest day.
4. **alarm_only**: anything else not ok (a single drifted column, the server unreachable or
   serving another version than the registry's champion, too little traffic).
5. **healthy**: nothing to do.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

from mlpipeline.monitoring.checks import BREACH, OK, SKIPPED, UNAVAILABLE, Finding
from mlpipeline.pipeline_config import MonitoringConfig

WARN = "warn"
HEALTHY, RETRAIN, ROLLBACK, ALARM_ONLY = "healthy", "retrain", "rollback", "alarm_only"
ACTIONS = (HEALTHY, RETRAIN, ROLLBACK, ALARM_ONLY)


@dataclass
class ChampionInfo:
    """The registry's champion and how it got there (from the audit trail)."""

    version: str | None
    moved_by: str | None = None  # promote | rollback
    moved_at: str | None = None  # ISO time of that move
    previous: str | None = None  # the champion it replaced

    @classmethod
    def from_history(cls, champion: str | None, history: list[dict[str, Any]]) -> ChampionInfo:
        moves = [h for h in history if h.get("action") in ("promote", "rollback")]
        into = [h for h in moves if str(h.get("to_version")) == str(champion)]
        if champion is None or not into:
            return cls(version=champion)
        last = into[-1]
        previous = last.get("from_version")
        return cls(
            version=str(champion),
            moved_by=last["action"],
            moved_at=last.get("time"),
            previous=str(previous) if previous is not None else None,
        )

    def age_days(self, now: dt.datetime) -> float | None:
        if not self.moved_at:
            return None
        return (now - dt.datetime.fromisoformat(self.moved_at)).total_seconds() / 86400


@dataclass
class Decision:
    action: str
    reasons: list[str]
    alarms: list[dict[str, Any]] = field(default_factory=list)
    rollback_target: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _alarm(finding: Finding, severity: str, action: str, model: str, day: str) -> dict[str, Any]:
    return {
        "what": f"{finding.check}: {finding.summary}",
        "check": finding.check,
        "severity": severity,
        "model": model,
        "version": finding.version,
        "day": day,
        "figures": finding.figures,
        "thresholds": finding.thresholds,
        "suggested_action": action,
    }


def monitoring_decision(
    findings: list[Finding],
    champion: ChampionInfo,
    cfg: MonitoringConfig,
    model: str,
    day: str,
    now: dt.datetime | None = None,
) -> Decision:
    now = now or dt.datetime.now(dt.UTC)
    by_check = {f.check: f for f in findings}
    alarms: list[dict[str, Any]] = []

    # 1-2. The champion's own quality or engineering breach.
    champion_breaches = [
        f
        for f in (by_check.get("quality"), by_check.get("engineering"))
        if f is not None and f.status == BREACH and f.version is not None and f.version == champion.version
    ]
    if champion_breaches:
        reasons = [f"{f.check}: {f.summary}" for f in champion_breaches]
        age = champion.age_days(now)
        if (
            champion.moved_by == "promote"
            and champion.previous
            and age is not None
            and age <= cfg.rollback_window_days
        ):
            action_text = (
                f"automatic rollback of {model} v{champion.version} to v{champion.previous} "
                f"(promoted {age:.2f} days ago, within {cfg.rollback_window_days})"
            )
            alarms = [_alarm(f, "critical", action_text, model, day) for f in champion_breaches]
            alarms += _other_alarms(findings, champion_breaches, model, day)
            return Decision(ROLLBACK, [*reasons, action_text], alarms, champion.previous)
        if not champion.previous:
            why = "no earlier champion to roll back to"
        elif champion.moved_by != "promote":
            why = f"v{champion.version} is itself the result of a rollback"
        else:
            why = f"promoted {age:.1f} days ago, beyond the automatic rollback window of {cfg.rollback_window_days}"
        action_text = (
            f"investigate {model} v{champion.version}; {why}: roll back by hand (model_rollback) or retrain"
        )
        alarms = [_alarm(f, "critical", action_text, model, day) for f in champion_breaches]
        alarms += _other_alarms(findings, champion_breaches, model, day)
        return Decision(ALARM_ONLY, [*reasons, why], alarms)

    drift = by_check.get("drift")
    if drift is not None and drift.status == BREACH:
        action_text = f"retraining {model} on the newest data (dataset for {day})"
        alarms = [_alarm(drift, "warning", action_text, model, day)]
        alarms += _other_alarms(findings, [drift], model, day)
        return Decision(RETRAIN, [f"drift: {drift.summary}"], alarms)

    others = _other_alarms(findings, [], model, day)
    if others:
        return Decision(ALARM_ONLY, [a["what"] for a in others], others)
    return Decision(HEALTHY, ["every check passed or had nothing to judge"], [])


_ACTIONS_FOR = {
    "consistency": "check the serving pointer and the server's last reload error; reload it (POST /admin/reload) or run model_rollback",
    "engineering": "check the model server (GET /health, /metrics, its log) and the host",
    "drift": "check the upstream data for the drifted columns (a unit or schema change?)",
    "traffic": "check that traffic reaches the server and that its prediction log is written",
    "quality": "compare the served version with its golden-set figures; roll back by hand if needed",
    "golden": "build the next golden version from recent labelled days (golden_dataset)",
}


def _other_alarms(
    findings: list[Finding], handled: list[Finding], model: str, day: str
) -> list[dict[str, Any]]:
    out = []
    for f in findings:
        if f in handled or f.status in (OK, SKIPPED):
            continue
        if f.check == "golden" and f.status == WARN:
            continue  # stale, but nothing fresher is allowed yet: a note in the record, no alarm
        severity = (
            "critical"
            if f.status in (BREACH, UNAVAILABLE) and f.check not in ("drift", "golden")
            else "warning"
        )
        action = f.figures.get("suggested_action") or _ACTIONS_FOR.get(f.check, "investigate")
        out.append(_alarm(f, severity, action, model, day))
    return out
