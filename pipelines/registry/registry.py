"""Thin, normalised access to the MLflow model registry: versions, aliases, tags and model loading.

Versions are always ``str`` here: the SQLite store hands alias versions back as int, the REST server as str.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines.registry.approval import ApprovalRecord
from pipelines.settings import Settings

if TYPE_CHECKING:
    import lightgbm as lgb

CHAMPION, PREVIOUS = "champion", "previous"
APPROVAL_PREFIX = "approval."


class ModelVersionNotFound(LookupError):
    """A registered model or one of its versions does not exist."""


# What the registry answers about a model, version or run that is not there (a bad version string included). Any
# other MlflowException (the server down, its database away) is raised as it is: it names the server, and a
# registry that could not answer must never read as "no such version", "no champion" or "no metrics".
_ABSENT = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})


def _absent(exc: MlflowException) -> bool:
    return exc.error_code in _ABSENT


@dataclass
class ModelVersionInfo:
    """One registered model version with what reviewers and the gate need to see."""

    name: str
    version: str
    run_id: str
    source: str
    aliases: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    # The approval tags without their prefix (status, by, at, comment), or None before any review.
    approval: dict[str, str] | None = None
    created_at: dt.datetime | None = None

    @property
    def approval_record(self) -> ApprovalRecord | None:
        return ApprovalRecord.from_tags(self.tags)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (for ``mlctl status`` and XCom)."""
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat() if self.created_at else None
        return data


def connect(settings: Settings) -> MlflowClient:
    """A client on the settings' tracking store; also points MLflow's fluent API (log_model, ...) there."""
    uri = settings.mlflow_tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    # The one place an identity reaches MLflow, which reads it from these variables only (stack: basic-auth).
    os.environ.update(settings.mlflow_client_environment())
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def never_written(settings: Settings) -> bool:
    """The tracking store is a SQLite file no one has created yet (local profile, before the first training run):
    it holds no model. Readers answer "none" without creating it (MLflow would build its schema: seconds)."""
    uri = settings.mlflow_tracking_uri
    return uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists()


def artifact_location(settings: Settings, experiment: str) -> str | None:
    root = settings.mlflow_artifact_root
    if root.startswith("mlflow-artifacts:"):
        # The tracking server places it at mlflow-artifacts:/<experiment id>. Its basic-auth app grants proxied
        # artifacts by the experiment id leading the path: under a name only MLflow's admin could read or write.
        return None
    if urlparse(root).scheme:  # s3://..., mlflow-artifacts:/ (proxied by the tracking server), file://...
        return f"{root.rstrip('/')}/{experiment}"
    return (Path(root).expanduser().resolve() / experiment).as_uri()


def ensure_experiment(settings: Settings, name: str) -> str:
    """The id of experiment ``name``, created with an explicit artifact location under the artifact root."""
    client = connect(settings)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location(settings, name))


def _info(client: MlflowClient, mv: Any) -> ModelVersionInfo:
    tags = dict(mv.tags or {})
    metrics: dict[str, float] = {}
    if mv.run_id:
        try:
            metrics = dict(client.get_run(mv.run_id).data.metrics)
        except MlflowException as exc:
            if not _absent(exc):
                raise
            metrics = {}  # the run was deleted; the version stays usable
    return ModelVersionInfo(
        name=mv.name,
        version=str(mv.version),
        run_id=mv.run_id or "",
        source=mv.source or "",
        aliases=[str(a) for a in (mv.aliases or [])],
        tags=tags,
        metrics=metrics,
        approval=_approval(tags),
        created_at=dt.datetime.fromtimestamp(mv.creation_timestamp / 1000, dt.UTC) if mv.creation_timestamp else None,
    )


def _approval(tags: dict[str, str]) -> dict[str, str] | None:
    if ApprovalRecord.from_tags(tags) is None:
        return None
    return {k.removeprefix(APPROVAL_PREFIX): v for k, v in tags.items() if k.startswith(APPROVAL_PREFIX)}


def get_version(settings: Settings, name: str, version: str | int) -> ModelVersionInfo:
    client = connect(settings)
    try:
        return _info(client, client.get_model_version(name, str(version)))
    except MlflowException as exc:
        if not _absent(exc):
            raise
        raise ModelVersionNotFound(
            f"registered model {name!r} has no version {version!r} in {settings.mlflow_tracking_uri}; "
            "see `mlctl status` for the versions there are"
        ) from exc


def get_alias(settings: Settings, name: str, alias: str) -> ModelVersionInfo | None:
    """The version holding ``alias``, or None if the alias (or the model) does not exist."""
    if never_written(settings):
        return None
    client = connect(settings)
    try:
        aliases = client.get_registered_model(name).aliases or {}
    except MlflowException as exc:
        if not _absent(exc):
            raise
        return None
    version = aliases.get(alias)
    return None if version is None else _info(client, client.get_model_version(name, str(version)))


def get_champion(settings: Settings, name: str) -> ModelVersionInfo | None:
    return get_alias(settings, name, CHAMPION)


def aliases(settings: Settings, name: str) -> dict[str, str]:
    """alias -> version (str) of a registered model; empty if it does not exist."""
    if never_written(settings):
        return {}
    client = connect(settings)
    try:
        return {a: str(v) for a, v in (client.get_registered_model(name).aliases or {}).items()}
    except MlflowException as exc:
        if not _absent(exc):
            raise
        return {}


def list_versions(settings: Settings, name: str) -> list[ModelVersionInfo]:
    """All versions of a registered model, oldest first (empty if it does not exist)."""
    if never_written(settings):
        return []
    client = connect(settings)
    found = client.search_model_versions(f"name = '{name}'")
    return sorted((_info(client, mv) for mv in found), key=lambda i: int(i.version))


def set_alias(settings: Settings, name: str, alias: str, version: str | int) -> None:
    connect(settings).set_registered_model_alias(name, alias, str(version))


def delete_alias(settings: Settings, name: str, alias: str) -> None:
    connect(settings).delete_registered_model_alias(name, alias)


def set_version_tags(settings: Settings, name: str, version: str | int, tags: dict[str, Any]) -> None:
    client = connect(settings)
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))


def load_booster(settings: Settings, name: str, version: str | int) -> lgb.Booster:
    """The LightGBM Booster of ``models:/<name>/<version>`` (predict with ``num_threads`` explicitly)."""
    import mlflow.lightgbm

    get_version(settings, name, version)  # a clear error for a missing version, before any download
    return mlflow.lightgbm.load_model(f"models:/{name}/{version}")
