"""Airflow extensions of the pipeline (sensors, links, notifiers); logic lives in ``mlpipeline``."""
