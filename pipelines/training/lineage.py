"""What a model was made from, for its MLflow run: code version, spec, Feast feature service and view versions.

A Feast view has no version number; its definition digest (the serialised spec proto: schema, source, ttl, entities)
stands for one, so two runs with the same digest read features defined the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

from pipelines.settings import PROJECT_ROOT, Settings
from pipelines.specs import ModelSpec

UNKNOWN = "unknown"


def code_version() -> dict[str, str]:
    """The git commit of the code (and whether the checkout had uncommitted changes).

    ``STOREFRONT_CODE_VERSION`` wins when set: images built without ``.git`` stamp it at build time.
    """
    stamped = os.environ.get("STOREFRONT_CODE_VERSION")
    if stamped:
        return {"code.git_commit": stamped, "code.dirty": "false"}
    try:
        commit = _git("rev-parse", "HEAD")
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return {"code.git_commit": UNKNOWN, "code.dirty": UNKNOWN}
    return {"code.git_commit": commit, "code.dirty": str(dirty).lower()}


def _git(*args: str) -> str:
    out = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True, timeout=10)
    return out.stdout.strip()


def spec_digest(spec: ModelSpec) -> str:
    return hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def feature_lineage(settings: Settings, spec: ModelSpec) -> dict[str, str]:
    """``feast.feature_service`` and ``feast.view.<name>`` = definition digest of every view the service reads."""
    from feature_repo.definitions import definitions  # Feast is slow to import; only this needs it

    repo = definitions(settings)
    service = next((s for s in repo.services if s.name == spec.feature_service), None)
    if service is None:
        raise ValueError(
            f"model spec {spec.name!r}: feature service {spec.feature_service!r} is not declared in feature_repo "
            f"(known: {[s.name for s in repo.services]})"
        )
    views = {v.name: v for v in [*repo.views, *repo.on_demand_views]}
    tags = {"feast.feature_service": service.name, "feast.project": settings.feast_project}
    for projection in service.feature_view_projections:
        proto = views[projection.name].to_proto().spec
        # Registry bookkeeping (creation times of the source) is not part of the definition.
        fields = proto.DESCRIPTOR.fields_by_name
        if "batch_source" in fields and proto.HasField("batch_source"):
            proto.batch_source.ClearField("meta")
        sources = b""
        if "sources" in fields:  # on-demand views: name the sources; their protos carry registry timestamps
            sources = ",".join(sorted(proto.sources)).encode()
            proto.ClearField("sources")
        digest = hashlib.sha256(proto.SerializeToString(deterministic=True) + sources).hexdigest()[:12]
        tags[f"feast.view.{projection.name}"] = digest
    return tags
