"""Storefront ML: the importable platform package."""
