"""Feature computation per entity and day, and the Feast feature store."""
