"""Raw timing CSVs → wide per-batch tables and per-method summaries (see analysis/aggregate.py)."""
