"""The steps the DAGs schedule: each takes settings and a logical date, returns a small JSON-able summary."""
