"""Airflow glue: its environment from settings, a REST client, in-process DAG runs."""
