"""What only the embedded stack and the demo need: process supervision, the demo, the Airflow
REST client, the env file, the traffic simulator and its delayed labels, failure scenarios.

The product (everything else under ``mlpipeline``) never imports this package;
``tests/dags/test_house_rules.py`` enforces the direction (the demo-only DAG
``traffic_replay`` and the ``__main__`` entry points may use it).
"""
