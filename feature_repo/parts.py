"""A part of the feature repo: the Feast objects one use case declares, and how parts combine."""

from __future__ import annotations

from dataclasses import dataclass, field

from feast import Entity, FeatureService, FeatureView, OnDemandFeatureView
from feast.data_source import DataSource

# Every batch feature view names the lake table of daily partitions it reads, so materialization can find it.
LAKE_TABLE_TAG = "lake_table"


@dataclass(frozen=True)
class RepoPart:
    """Entities, sources, views, on-demand views and services of one use case (or of the whole repo)."""

    entities: list[Entity] = field(default_factory=list)
    sources: list[DataSource] = field(default_factory=list)  # file sources and the push sources over them
    views: list[FeatureView] = field(default_factory=list)
    on_demand_views: list[OnDemandFeatureView] = field(default_factory=list)
    services: list[FeatureService] = field(default_factory=list)

    @property
    def objects(self) -> list:
        return [*self.entities, *self.sources, *self.views, *self.on_demand_views, *self.services]

    def view(self, name: str) -> FeatureView:
        for view in self.views:
            if view.name == name:
                return view
        raise KeyError(f"no feature view {name!r} in this part; known: {[v.name for v in self.views]}")

    def entity(self, name: str) -> Entity:
        for entity in self.entities:
            if entity.name == name:
                return entity
        raise KeyError(f"no entity {name!r} in this part; known: {[e.name for e in self.entities]}")


def combine(*parts: RepoPart) -> RepoPart:
    """One part holding every object of ``parts``; a name declared twice is an error."""
    whole = RepoPart(
        entities=[e for p in parts for e in p.entities],
        sources=[s for p in parts for s in p.sources],
        views=[v for p in parts for v in p.views],
        on_demand_views=[v for p in parts for v in p.on_demand_views],
        services=[s for p in parts for s in p.services],
    )
    for kind in ("entities", "sources", "views", "on_demand_views", "services"):
        names = [o.name for o in getattr(whole, kind)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"feature repo: {kind} {dupes} are declared by more than one part")
    return whole


def lake_table(view: FeatureView) -> str:
    """The lake table a batch view reads (its ``lake_table`` tag)."""
    try:
        return view.tags[LAKE_TABLE_TAG]
    except KeyError as exc:
        raise ValueError(f"feature view {view.name!r} lacks the tag {LAKE_TABLE_TAG!r} naming its lake table") from exc
