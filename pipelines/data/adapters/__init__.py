"""Adapters: map real files (CSV or parquet) onto the canonical tables through YAML mappings (``mappings/``)."""

from pipelines.data.adapters.adapt import Adapted, adapt
from pipelines.data.adapters.errors import (
    IngestError,
    MappingError,
    SourceColumnsError,
    SourceFormatError,
    SourceRuleError,
    SourceValueError,
)
from pipelines.data.adapters.mapping import Mapping, load_mapping
from pipelines.data.adapters.source import Drop

__all__ = [
    "Adapted",
    "Drop",
    "IngestError",
    "Mapping",
    "MappingError",
    "SourceColumnsError",
    "SourceFormatError",
    "SourceRuleError",
    "SourceValueError",
    "adapt",
    "load_mapping",
]
