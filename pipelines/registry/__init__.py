"""MLflow model registry: versions, aliases, tags, audit log, promotion."""
