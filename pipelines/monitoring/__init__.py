"""Monitoring of served models: what was served, compared with what training would have seen."""
