"""Figures from aggregated tables: figures/plot.py dispatches to figures/<plot>.py (the YAML's ``plot:``)."""
