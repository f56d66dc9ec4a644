"""Every DAG's trigger form works with its defaults and refuses what it must.

The Airflow 3 UI treats a param whose value does not validate (an empty non-nullable string, a
missing required field) as missing, and keeps *Trigger* and *Run Backfill* disabled. So: every
param either has a default that validates or is nullable; the only fields a person must fill are
listed here, on purpose. The same schema validates REST/CLI conf, so bad values are refused at
trigger time with the field named.
"""

from __future__ import annotations

import copy

import pytest
from test_dag_integrity import ROOT

pytestmark = pytest.mark.metadata

#: Fields without a usable default, on purpose: the form refuses to trigger until they are filled.
REQUIRED_BY_DESIGN = {("model_rollback", "reason")}

#: dag_id -> conf values that must be refused (each one alone, on top of the defaults).
REFUSED = {
    "dataset_generation": [
        {"version_day": "2013-13-45"},
        {"version_day": "tomorrow"},
        {"version_day": 20130105},
    ],
    "golden_dataset": [
        {"start": "2013/01/20"},
        {"sample_size": 10},
        {"version": "v 2"},
        {"version": "../v1"},
    ],
    "model_training": [{"dataset_version": "2013-02-30"}, {"n_trials": 0}, {"n_trials": "many"}],
    "model_deployment": [{"challenger_version": "latest"}, {"challenger_version": "-1"}],
    "model_rollback": [
        {"reason": "ok so", "target_version": "v3"},
        {"reason": ""},
        {"reason": "fine", "dry_run": "yes"},
    ],
    "traffic_replay": [{"rate_per_s": 0}, {"batch_size": 0}],
}

#: dag_id -> conf values that must be accepted.
ACCEPTED = {
    "dataset_generation": [{"version_day": "2013-07-15"}, {"version_day": None}],
    "golden_dataset": [{"version": "v2"}, {"version": None}],
    "model_training": [{"dataset_version": "2013-01-04", "n_trials": 3}, {"dataset_version": None}],
    "model_deployment": [{"challenger_version": "4"}, {"challenger_version": ""}],
    "model_rollback": [
        {"reason": "latency alarm, on-call"},
        {"reason": "bad v5", "target_version": "3", "dry_run": True},
        {"reason": "REST callers send an empty string for 'previous'", "target_version": ""},
    ],
}


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def _resolve(dag, conf: dict) -> dict:
    params = copy.deepcopy(dag.params)
    for key, value in conf.items():
        assert key in params, f"{dag.dag_id} has no param {key}"
        params[key] = value
    return params.validate()


def test_every_form_triggers_with_its_defaults(dagbag):
    for dag_id, dag in dagbag.dags.items():
        for key in dag.params:
            param = dag.params.get_param(key)
            if (dag_id, key) in REQUIRED_BY_DESIGN:
                assert not param.has_value, f"{dag_id}.{key} is meant to be filled in by a person"
                continue
            # The value the form starts with must validate, or Trigger/Backfill stay disabled.
            param.resolve()
            assert param.schema.get("title"), f"{dag_id}.{key} has no title for the form"
            assert param.description, f"{dag_id}.{key} does not say what it does"
            types = param.schema.get("type")
            if param.value is None:
                assert isinstance(types, list), f"{dag_id}.{key}: empty must be allowed (type null)"
                assert "null" in types, f"{dag_id}.{key}: empty must be allowed (type null)"


def test_only_the_listed_fields_must_be_filled(dagbag):
    for dag_id, dag in dagbag.dags.items():
        required = {k for d, k in REQUIRED_BY_DESIGN if d == dag_id}
        if required:
            with pytest.raises(Exception, match="|".join(required)):
                _resolve(dag, {})
        _resolve(dag, dict.fromkeys(required, "on-call test"))  # then the defaults do the rest


@pytest.mark.parametrize(("dag_id", "conf"), [(d, c) for d, cs in REFUSED.items() for c in cs])
def test_bad_values_are_refused_with_the_field_named(dagbag, dag_id, conf):
    from airflow.sdk.exceptions import ParamValidationError

    filled = {k: "on-call test" for d, k in REQUIRED_BY_DESIGN if d == dag_id}
    with pytest.raises(ParamValidationError) as err:
        _resolve(dagbag.dags[dag_id], filled | conf)
    assert any(key in str(err.value) for key in conf), err.value


@pytest.mark.parametrize(("dag_id", "conf"), [(d, c) for d, cs in ACCEPTED.items() for c in cs])
def test_good_values_are_accepted(dagbag, dag_id, conf):
    _resolve(dagbag.dags[dag_id], conf)


@pytest.mark.parametrize("target", [None, "3", 3])
def test_monitoring_triggers_pass_the_forms_they_fill(dagbag, target):
    """What model_monitoring sends as conf (rollback and retrain) validates against the forms."""
    from mlpipeline.monitoring.golden import refresh_conf
    from mlpipeline.monitoring.steps import retrain_conf, rollback_conf
    from mlpipeline.pipeline_config import get_pipeline_config

    decided = {"reasons": ["quality: ROC AUC 0.37 below 0.69"], "rollback_target": target}
    stale = {
        "status": "breach",
        "summary": "golden set v1 is stale: temp drifted",
        "figures": {"refresh": {"start": "2013-06-04", "end": "2013-06-17"}},
    }
    golden = refresh_conf(stale, get_pipeline_config(), "2013-07-15")
    assert golden["start"] == "2013-06-04"
    for dag_id, conf in (
        ("model_rollback", rollback_conf(decided, "2013-01-10")),
        ("dataset_generation", retrain_conf({"reasons": ["drift: temp"]}, "2013-07-15")),
        ("golden_dataset", golden),
    ):
        dag = dagbag.dags[dag_id]
        # Extra keys (requested_by, reason for a retrain) are conf only: no param checks them.
        _resolve(dag, {k: v for k, v in conf.items() if k in dag.params})
