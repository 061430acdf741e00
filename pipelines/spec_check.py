"""``mlctl validate-specs``: every model spec parses, and what it names exists: a feature service its entity's use
case declares (pipelines/usecases/), reviewer logins."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipelines.settings import Settings
from pipelines.specs import SpecError, load_spec


@dataclass
class SpecCheck:
    path: Path
    name: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_specs(settings: Settings) -> list[SpecCheck]:
    """One check per ``models/*.yaml``; a bad file does not hide the others' problems."""
    from feature_repo.definitions import parts_by_entity  # Feast is slow to import; only this check needs it

    parts = parts_by_entity(settings)
    services = {s.name: entity for entity, part in parts.items() for s in part.services}
    logins = {entry.split(":")[0] for entry in settings.airflow_users.split(",") if entry}
    paths = sorted(settings.models_dir.glob("*.yaml"))
    if not paths:
        return [SpecCheck(settings.models_dir, problems=[f"{settings.models_dir}: no model spec (*.yaml) found"])]
    checks = []
    for path in paths:
        check = SpecCheck(path)
        try:
            spec = load_spec(path)
        except SpecError as exc:
            check.problems.append(str(exc))
            checks.append(check)
            continue
        check.name = spec.name
        if spec.feature_service not in services:
            check.problems.append(
                f"{path}: key 'feature_service': {spec.feature_service!r} is not declared in feature_repo/ "
                f"(declared: {sorted(services)})"
            )
        elif services[spec.feature_service] != spec.entity:
            check.problems.append(
                f"{path}: key 'feature_service': {spec.feature_service!r} serves entity "
                f"{services[spec.feature_service]!r}, but the spec's entity is {spec.entity!r}; name a service of "
                f"the {spec.entity!r} use case ({sorted(s.name for s in parts[spec.entity].services)})"
            )
        unknown = [r for r in spec.reviewers if r not in logins]
        if unknown:
            check.problems.append(
                f"{path}: key 'reviewers': {unknown} have no Airflow login (STOREFRONT_AIRFLOW_USERS has "
                f"{sorted(logins)}); they could never answer an approval request"
            )
        checks.append(check)
    return checks
