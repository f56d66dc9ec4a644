"""Every Asset of the pipeline, declared once and imported by producers and consumers.

Event extras are small JSON summaries (day, version, row counts, run ids), never data.
Assets are named without a URI scheme: a scheme makes Airflow load every provider's URI
normaliser (boto3 and more) at parse time, which costs ~0.5 s per DAG file.
"""

from __future__ import annotations

from airflow.sdk import Asset

#: A day of raw nycflights13 tables committed under ``raw/<table>/dt=…`` (extra: day, rows).
RAW_DATA = Asset(name="raw_nycflights13", group="raw")

#: A published training dataset version ``datasets/<name>/ds=…`` (extra: version, window,
#: rows per split, label rate, content hash, path, golden version and overlap).
TRAINING_DATASET = Asset(name="training_dataset", group="datasets")

#: A frozen golden evaluation set ``golden/<name>/<version>`` (extra: version, window, rows, hash).
GOLDEN_DATASET = Asset(name="golden_dataset", group="datasets")

#: A new registered model version with alias ``challenger`` (extra: model, version, run id,
#: dataset version, data window end).
MODEL_CANDIDATE = Asset(name="model_candidate", group="models")

#: The champion alias moved and the server serves it (extra: model, from/to version, action).
MODEL_DEPLOYED = Asset(name="model_deployed", group="models")
