"""Great Expectations suites, checkpoints and quarantine of bad partitions."""
