"""Rollouts of a challenger beside the champion, kept in the MLflow registry: an alias ``rollout-<name>`` on the
challenger's version and the rollout's terms as tags of the registered model (``rollout.<name>.mode`` ...).

``shadow``: the challenger scores every request too; its scores are logged (arm ``shadow:<name>``), never returned.
``split``: a fixed share of entities, chosen by a hash of the rollout name and the entity key (sticky: the same
entity always lands in the same arm), is answered by the challenger (arm ``split:<name>``).

:func:`start_rollout` and :func:`end_rollout` are the reviewer's decisions (``mlctl rollout`` / ``rollout-end``):
the same reviewer, gate and self-approval checks as a promotion, every decision in the audit log. Ending deletes
the alias and adds ``ended_by``/``ended_at``/``outcome`` to the tags, which stay as the rollout's history.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re
from typing import TYPE_CHECKING, Literal

from pipelines.settings import Settings

if TYPE_CHECKING:
    from pipelines.registry.promotion import Freshness
    from pipelines.specs import ModelSpec

ALIAS_PREFIX = "rollout-"
TAG_PREFIX = "rollout."
CHAMPION_ARM = "champion"
Mode = Literal["shadow", "split"]
MODES: tuple[str, ...] = ("shadow", "split")
MAX_SPLIT_SHARE = 0.5
# A rollout's name is part of an alias, of tag keys and of the log's arm: short, lower case, no dots.
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,23}")
OUTCOMES = {True: "promoted", False: "stopped"}


class RolloutError(ValueError):
    """A rollout cannot be started, read or ended as asked."""


@dataclasses.dataclass(frozen=True)
class Rollout:
    model: str
    name: str
    version: str
    mode: Mode
    share: float  # split: the share of entities answered by the challenger; shadow: 1.0
    started_by: str
    started_at: dt.datetime
    comment: str = ""
    # Set once ended (the alias is gone; the tags stay as history): who, when, "promoted" or "stopped".
    ended_by: str = ""
    ended_at: dt.datetime | None = None
    outcome: str = ""

    @property
    def active(self) -> bool:
        return self.ended_at is None

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


def _terms(tags: dict[str, str], name: str) -> dict[str, str]:
    prefix = f"{TAG_PREFIX}{name}."
    return {k[len(prefix) :]: v for k, v in tags.items() if k.startswith(prefix)}


def _stamp(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


def _rollout(model: str, name: str, version: str, terms: dict[str, str]) -> Rollout:
    mode = terms.get("mode")
    if mode not in MODES:
        raise RolloutError(
            f"model {model!r}: rollout {name!r} has no valid tag {TAG_PREFIX}{name}.mode (got {mode!r}); end the "
            "rollout and start it again with `mlctl rollout`"
        )
    return Rollout(
        model=model,
        name=name,
        version=str(version),
        mode=mode,  # type: ignore[arg-type]
        share=float(terms.get("share", "1.0")),
        started_by=terms.get("started_by", ""),
        started_at=_stamp(terms.get("started_at")) or dt.datetime.min,
        comment=terms.get("comment", ""),
        ended_by=terms.get("ended_by", ""),
        ended_at=_stamp(terms.get("ended_at")),
        outcome=terms.get("outcome", ""),
    )


def parse_rollouts(model: str, tags: dict[str, str], aliases: dict[str, str]) -> list[Rollout]:
    """The active rollouts of a model from its registered-model tags and aliases: a rollout is active while its
    alias exists (ending one deletes the alias; its tags stay as history)."""
    out = []
    for alias, version in sorted(aliases.items()):
        if alias.startswith(ALIAS_PREFIX):
            name = alias[len(ALIAS_PREFIX) :]
            out.append(_rollout(model, name, str(version), _terms(tags, name)))
    return out


def parse_history(model: str, tags: dict[str, str], aliases: dict[str, str]) -> list[Rollout]:
    """Every rollout the tags remember, active or ended, oldest first (by ``started_at``)."""
    active = {r.name: r for r in parse_rollouts(model, tags, aliases)}
    names = {k[len(TAG_PREFIX) :].split(".", 1)[0] for k in tags if k.startswith(TAG_PREFIX) and k.endswith(".version")}
    out = [active.get(n) or _rollout(model, n, tags[f"{TAG_PREFIX}{n}.version"], _terms(tags, n)) for n in names]
    return sorted(out, key=lambda r: (r.started_at.replace(tzinfo=None), r.name))


def _registered(settings: Settings, model: str) -> tuple[dict[str, str], dict[str, str]] | None:
    """(tags, aliases) of a registered model, or None when it is not registered."""
    from mlflow.exceptions import MlflowException

    from pipelines.registry.registry import connect

    try:
        registered = connect(settings).get_registered_model(model)
    except MlflowException:
        return None
    return dict(registered.tags or {}), {a: str(v) for a, v in (registered.aliases or {}).items()}


def active_rollouts(settings: Settings, model: str) -> list[Rollout]:
    """The model's rollouts in progress (none when the model is not registered)."""
    found = _registered(settings, model)
    return [] if found is None else parse_rollouts(model, *found)


def rollout_history(settings: Settings, model: str) -> list[Rollout]:
    """Every rollout of the model, active or ended, oldest first (none when the model is not registered)."""
    found = _registered(settings, model)
    return [] if found is None else parse_history(model, *found)


def find_rollout(settings: Settings, model: str, name: str | None = None, active_only: bool = False) -> Rollout:
    """The rollout ``name`` of ``model``; without a name the active one, else (unless ``active_only``) the newest."""
    history = rollout_history(settings, model)
    candidates = [r for r in history if r.active] if active_only else history
    if name is not None:
        for rollout in candidates:
            if rollout.name == name:
                return rollout
        known = ", ".join(f"{r.name} ({'active' if r.active else r.outcome or 'ended'})" for r in history) or "none"
        what = "no active rollout" if active_only else "no rollout"
        raise RolloutError(f"model {model!r} has {what} named {name!r}; its rollouts: {known}")
    active = [r for r in history if r.active]
    if active:
        return active[-1]
    if active_only or not history:
        raise RolloutError(
            f"model {model!r} has no {'active ' if active_only else ''}rollout; start one with "
            f"`mlctl rollout {model} VERSION --mode shadow|split`"
        )
    return history[-1]


def _check_terms(model: str, name: str, mode: str, share: float) -> float:
    """The share the rollout will carry (1.0 for a shadow); RolloutError on a bad name, mode or share."""
    if not NAME_PATTERN.fullmatch(name):
        raise RolloutError(
            f"rollout name {name!r}: use 1-24 lower-case letters, digits, '-' or '_' (it becomes the alias "
            f"{ALIAS_PREFIX}<name> of {model!r}), e.g. ab1"
        )
    if mode not in MODES:
        raise RolloutError(f"rollout mode {mode!r}: use one of {list(MODES)}")
    if mode == "shadow":
        if share != 1.0:
            raise RolloutError(f"a shadow rollout scores every request: its share is 1.0, not {share}")
        return 1.0
    if not 0 < share <= MAX_SPLIT_SHARE:
        raise RolloutError(
            f"split share {share}: give the challenger's share of entities in (0, {MAX_SPLIT_SHARE}], e.g. 0.1"
        )
    return share


def next_name(settings: Settings, model: str) -> str:
    """The first of ab1, ab2, ... no rollout of ``model`` has used."""
    used = {r.name for r in rollout_history(settings, model)}
    return next(f"ab{i}" for i in range(1, len(used) + 2) if f"ab{i}" not in used)


class _NotChecked:
    """Freshness for the promotion checks at a rollout's start: the challenger reads the champion's feature
    service, so the online features are the champion's concern; a promotion at the end checks them."""

    fresh = True
    message = "not checked at a rollout's start (checked when it is promoted)"


def start_rollout(
    settings: Settings,
    spec: ModelSpec,
    version: str,
    mode: str,
    share: float,
    name: str,
    by: str,
    comment: str = "",
    now: dt.datetime | None = None,
) -> Rollout:
    """Serve ``version`` beside the champion: alias ``rollout-<name>``, the terms as tags, an audit event.

    Refuses (RolloutError, or promotion's GateNotPassed / ReviewerNotAllowed / SelfApproval) and touches nothing
    when the version is missing or is the champion, did not pass the gate, ``by`` is not a reviewer or trained it,
    the terms are invalid, the name was used before, or another rollout of the model is active.
    """
    from pipelines.registry.approval import ApprovalRecord
    from pipelines.registry.audit import write_audit
    from pipelines.registry.promotion import _check
    from pipelines.registry.registry import CHAMPION, connect, get_alias, get_version, set_alias

    version, model = str(version), spec.name
    share = _check_terms(model, name, mode, float(share))
    get_version(settings, model, version)  # ModelVersionNotFound with the next step
    champion = get_alias(settings, model, CHAMPION)
    if champion is None:
        raise RolloutError(f"{model} has no champion to compare v{version} with; promote a first version instead")
    if champion.version == version:
        raise RolloutError(f"{model} v{version} is the champion already; roll out another version")
    active = active_rollouts(settings, model)
    if active:
        other = active[0]
        raise RolloutError(
            f"{model} has an active rollout {other.name!r} ({other.mode}, v{other.version}, started by "
            f"{other.started_by} at {other.started_at:%Y-%m-%d %H:%M}); end it first with "
            f"`mlctl rollout-end {model} --name {other.name} --stop|--promote`"
        )
    if any(r.name == name for r in rollout_history(settings, model)):
        raise RolloutError(f"{model} had a rollout named {name!r} already (its tags are its history); pick another")
    at = (now or settings.serving_clock or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    # The promotion's gate, reviewer and self-approval checks, with the start as the reviewer's approval.
    _check(settings, spec, version, ApprovalRecord("approve", by, at, comment), _NotChecked())
    rollout = Rollout(model, name, version, mode, share, by, at, comment)  # type: ignore[arg-type]
    client = connect(settings)
    for key, value in rollout.tags().items():
        client.set_registered_model_tag(model, key, value)
    set_alias(settings, model, rollout.alias, version)  # last: serving follows the alias
    write_audit(
        settings,
        model,
        "rollout-start",
        version,
        {
            "rollout": name,
            "mode": mode,
            "share": share,
            "champion": champion.version,
            "by": by,
            "comment": comment,
            "started_at": at.isoformat(),
        },
    )
    return rollout


def promotion_freshness(settings: Settings, spec: ModelSpec, now: dt.datetime | None = None) -> Freshness:
    """The online freshness a promotion needs, built as the training DAG's promote task builds it: at the data
    time of the newest day whose inputs the lake holds (so a world of past dates is judged by its own days)."""
    from pipelines.features.store import online_freshness
    from pipelines.flows.training import data_time
    from pipelines.lake import Lake

    today = (now or dt.datetime.now(dt.UTC)).date()
    return online_freshness(
        settings,
        spec.feature_service,
        sample_user_ids=None,
        max_age=dt.timedelta(hours=spec.online_freshness_hours),
        now=data_time(Lake(settings), spec, today),
    )


def end_rollout(
    settings: Settings,
    spec: ModelSpec,
    name: str | None,
    by: str,
    promote: bool,
    comment: str = "",
    freshness: Freshness | None = None,
    now: dt.datetime | None = None,
) -> Rollout:
    """End the active rollout ``name`` (the model's only active one when None): the alias goes, the tags get
    ``ended_by``/``ended_at``/``outcome``, and an audit event ``rollout-promote`` or ``rollout-stop`` is written.

    ``promote``: the challenger first goes through :func:`pipelines.registry.promotion.promote` with an approval by
    ``by`` (gate, reviewer, self-approval and online freshness checked; ``freshness`` defaults to
    :func:`promotion_freshness`); a refusal leaves the rollout running. Stopping needs ``by`` to be a reviewer.
    """
    from pipelines.registry.approval import ApprovalRecord
    from pipelines.registry.audit import write_audit
    from pipelines.registry.decisions import request_review
    from pipelines.registry.promotion import ReviewerNotAllowed
    from pipelines.registry.promotion import promote as promote_version
    from pipelines.registry.registry import CHAMPION, connect, delete_alias, get_alias

    model = spec.name
    rollout = find_rollout(settings, model, name, active_only=True)
    if by not in spec.reviewers:
        raise ReviewerNotAllowed(
            f"{model}: {by or '(unknown user)'!r} is not a reviewer of this model and cannot end rollout "
            f"{rollout.name!r}; allowed: {spec.reviewers} (key 'reviewers' in models/{model}.yaml)"
        )
    at = (now or settings.serving_clock or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    champion = get_alias(settings, model, CHAMPION)
    record: dict[str, object] = {"rollout": rollout.name, "mode": rollout.mode, "share": rollout.share}
    if promote:
        # Ending a rollout with a promotion asks and answers at once: the A/B evidence is what is reviewed now.
        request_review(settings, spec, rollout.version, now=at)
        approval = ApprovalRecord("approve", by, at, comment)
        result = promote_version(
            settings, spec, rollout.version, approval, freshness or promotion_freshness(settings, spec, at)
        )
        record |= {"previous_champion": result.previous_version, "promotion_audit": result.audit_uri}
    else:
        record |= {"champion": None if champion is None else champion.version}
    ended = dataclasses.replace(rollout, ended_by=by, ended_at=at, outcome=OUTCOMES[promote])
    delete_alias(settings, model, rollout.alias)  # first: serving stops the challenger's arm
    prefix = f"{TAG_PREFIX}{rollout.name}."
    client = connect(settings)
    for key, value in {"ended_by": by, "ended_at": at.isoformat(), "outcome": ended.outcome}.items():
        client.set_registered_model_tag(model, prefix + key, value)
    if comment:
        client.set_registered_model_tag(model, prefix + "end_comment", comment)
    action = "rollout-promote" if promote else "rollout-stop"
    # Stamped when written, like promote()'s own event, so the log keeps the order things happened in.
    record |= {"by": by, "comment": comment, "ended_at": at.isoformat()}
    write_audit(settings, model, action, rollout.version, record)
    return ended
