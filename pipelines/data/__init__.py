"""Data: canonical schemas, the social-commerce simulator and extraction into the lake."""
