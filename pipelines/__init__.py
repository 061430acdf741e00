"""Storefront ML: the importable platform package."""

from pipelines.feast_import import skip_feast_typechecks

skip_feast_typechecks()
