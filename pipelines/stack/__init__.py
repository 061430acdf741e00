"""The loopback stack of the ``stack`` profile: S3, MLflow server, Airflow and serving as supervised processes."""
