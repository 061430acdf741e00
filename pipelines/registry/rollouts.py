"""Rollouts of a challenger beside the champion, kept in the MLflow registry: an alias ``rollout-<name>`` on the
challenger's version and the rollout's terms as tags of the registered model (``rollout.<name>.mode`` ...).

``shadow``: the challenger scores every request too; its scores are logged (arm ``shadow:<name>``), never returned.
``split``: a fixed share of entities, chosen by a hash of the rollout name and the entity key (sticky: the same
entity always lands in the same arm), is answered by the challenger (arm ``split:<name>``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Literal

from pipelines.settings import Settings

ALIAS_PREFIX = "rollout-"
TAG_PREFIX = "rollout."
CHAMPION_ARM = "champion"
Mode = Literal["shadow", "split"]
MODES: tuple[str, ...] = ("shadow", "split")


class RolloutError(ValueError):
    """A rollout cannot be started, read or ended as asked."""


@dataclass(frozen=True)
class Rollout:
    model: str
    name: str
    version: str
    mode: Mode
    share: float  # split: the share of entities answered by the challenger; shadow: 1.0
    started_by: str
    started_at: dt.datetime
    comment: str = ""

    @property
    def alias(self) -> str:
        return rollout_alias(self.name)

    @property
    def arm(self) -> str:
        """The prediction log's ``arm`` of the challenger's scores."""
        return f"{self.mode}:{self.name}"

    def tags(self) -> dict[str, str]:
        """The registered model's tags that describe this rollout."""
        prefix = f"{TAG_PREFIX}{self.name}."
        return {
            f"{prefix}version": self.version,
            f"{prefix}mode": self.mode,
            f"{prefix}share": repr(self.share),
            f"{prefix}started_by": self.started_by,
            f"{prefix}started_at": self.started_at.isoformat(),
            f"{prefix}comment": self.comment,
        }


def rollout_alias(name: str) -> str:
    return f"{ALIAS_PREFIX}{name}"


def in_split(rollout_name: str, entity_key: str, share: float) -> bool:
    """Whether an entity falls in a split's challenger arm: a stable hash of the rollout and the key, uniform in
    [0, 1), below ``share`` (the same answer in every process and on every day)."""
    digest = hashlib.blake2b(f"{rollout_name}\x00{entity_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


def parse_rollouts(model: str, tags: dict[str, str], aliases: dict[str, str]) -> list[Rollout]:
    """The active rollouts of a model from its registered-model tags and aliases: a rollout is active while its
    alias exists (ending one deletes the alias; its tags stay as history)."""
    out = []
    for alias, version in sorted(aliases.items()):
        if not alias.startswith(ALIAS_PREFIX):
            continue
        name = alias[len(ALIAS_PREFIX) :]
        prefix = f"{TAG_PREFIX}{name}."
        terms = {k[len(prefix) :]: v for k, v in tags.items() if k.startswith(prefix)}
        mode = terms.get("mode")
        if mode not in MODES:
            raise RolloutError(
                f"model {model!r}: alias {alias!r} has no valid tag {prefix}mode (got {mode!r}); end the rollout "
                "and start it again with `mlctl rollout`"
            )
        out.append(
            Rollout(
                model=model,
                name=name,
                version=str(version),
                mode=mode,  # type: ignore[arg-type]
                share=float(terms.get("share", "1.0")),
                started_by=terms.get("started_by", ""),
                started_at=dt.datetime.fromisoformat(terms["started_at"]) if "started_at" in terms else dt.datetime.min,
                comment=terms.get("comment", ""),
            )
        )
    return out


def active_rollouts(settings: Settings, model: str) -> list[Rollout]:
    """The model's rollouts in progress (none when the model is not registered)."""
    from mlflow.exceptions import MlflowException

    from pipelines.registry.registry import connect

    client = connect(settings)
    try:
        registered = client.get_registered_model(model)
    except MlflowException:
        return []
    aliases = {a: str(v) for a, v in (registered.aliases or {}).items()}
    return parse_rollouts(model, dict(registered.tags or {}), aliases)
