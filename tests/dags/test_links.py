"""The "MLflow run" and "Report" task buttons: plugin discovery, and links read back from a real run.

The API server evaluates global extra links on the *serialized* task, reading the URL a task
pushed to XCom from the metadata DB; the tests run a small DAG with ``dag.test()`` and read the
links back both directly and through a serialized copy of the DAG, as the API server does.
"""

from __future__ import annotations

import pendulum
import pytest
from mlpipeline_airflow.links import (
    MLFLOW_RUN_URL_KEY,
    REPORT_URL_KEY,
    MlflowRunLink,
    ReportLink,
    push_link,
)

pytestmark = pytest.mark.metadata

RUN_URL = "http://127.0.0.1:5000/#/experiments/1/runs/abc"
REPORT_URL = "http://127.0.0.1:8080/reports/drift/2013-02-01.html"


def test_plugin_is_discovered_from_the_plugins_folder():
    from airflow import plugins_manager, settings

    from mlpipeline.settings import PROJECT_ROOT

    assert settings.PLUGINS_FOLDER == str(PROJECT_ROOT / "plugins")
    plugins, import_errors = plugins_manager._get_plugins()
    assert import_errors == {}
    assert "mlpipeline" in {plugin.name for plugin in plugins}
    names = {link.name for link in plugins_manager.get_global_operator_extra_links()}
    assert {"MLflow run", "Report"} <= names


def test_push_link_rejects_unknown_keys_and_non_http_urls():
    class RecordingTi:
        def __init__(self) -> None:
            self.pushed: dict[str, object] = {}

        def xcom_push(self, key: str, value: object) -> None:
            self.pushed[key] = value

    ti = RecordingTi()
    push_link({"ti": ti}, REPORT_URL_KEY, REPORT_URL)
    push_link(ti, MLFLOW_RUN_URL_KEY, RUN_URL)
    assert ti.pushed == {REPORT_URL_KEY: REPORT_URL, MLFLOW_RUN_URL_KEY: RUN_URL}
    with pytest.raises(ValueError, match="unknown link key 'mlflow_url'"):
        push_link(ti, "mlflow_url", RUN_URL)
    with pytest.raises(ValueError, match="must be an http"):
        push_link(ti, REPORT_URL_KEY, "javascript:alert(1)")


def _write_to_db(the_dag) -> None:
    """Serialize ``the_dag`` into the metadata DB, as the DAG processor would after parsing it."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.serialization.serialized_objects import LazyDeserializedDAG
    from airflow.utils.session import create_session

    with create_session() as session:
        DagBundlesManager().sync_bundles_to_db(session=session)
        session.commit()
        update_dag_parsing_results_in_db(
            "dags-folder", None, [LazyDeserializedDAG.from_dag(the_dag)], {}, None, set(), session=session
        )


@pytest.fixture(scope="module")
def linked_run(airflow_db):
    """A finished run of a DAG whose ``train`` task pushed an MLflow run URL and ``quiet`` nothing."""
    from airflow.sdk import dag, get_current_context, task

    @dag(
        dag_id="mlp_test_links",
        schedule=None,
        start_date=pendulum.datetime(2013, 1, 1, tz="UTC"),
        catchup=False,
        tags=["test"],
    )
    def mlp_test_links():
        @task
        def train() -> None:
            """Pretend to train; record the MLflow run's URL."""
            push_link(get_current_context()["ti"], MLFLOW_RUN_URL_KEY, RUN_URL)

        @task
        def quiet() -> None:
            """Record nothing."""

        train()
        quiet()

    the_dag = mlp_test_links()
    _write_to_db(the_dag)  # dag.test() runs only DAGs the metadata DB knows
    run = the_dag.test()
    assert run.state == "success"
    tis = {ti.task_id: ti for ti in run.get_task_instances()}
    assert set(tis) == {"train", "quiet"}
    return the_dag, run, tis


def test_links_read_the_pushed_url(linked_run):
    the_dag, _, tis = linked_run
    train, quiet = tis["train"], tis["quiet"]
    operator = the_dag.get_task("train")
    assert MlflowRunLink().get_link(operator, ti_key=train.key) == RUN_URL
    assert ReportLink().get_link(operator, ti_key=train.key) == ""
    assert MlflowRunLink().get_link(the_dag.get_task("quiet"), ti_key=quiet.key) == ""


def test_links_through_the_serialized_dag(linked_run):
    """What the API server does: ``get_extra_links`` on the task of the run's serialized DAG."""
    from airflow.models.dagbag import DBDagBag
    from airflow.utils.session import create_session

    _, run, tis = linked_run
    with create_session() as session:
        serialized = DBDagBag().get_dag_for_run(run, session=session)
    assert serialized is not None
    assert type(serialized).__module__.startswith("airflow.serialization")
    train, quiet = serialized.get_task("train"), serialized.get_task("quiet")
    assert {"MLflow run", "Report"} <= set(train.extra_links)
    assert train.get_extra_links(tis["train"], "MLflow run") == RUN_URL
    assert train.get_extra_links(tis["train"], "Report") == ""
    assert quiet.get_extra_links(tis["quiet"], "MLflow run") == ""


def test_links_through_a_serialization_round_trip(linked_run):
    from airflow.serialization.serialized_objects import DagSerialization

    the_dag, _, tis = linked_run
    task = DagSerialization.from_dict(DagSerialization.to_dict(the_dag)).get_task("train")
    assert task.get_extra_links(tis["train"], "MLflow run") == RUN_URL
    assert task.get_extra_links(tis["train"], "Report") == ""
