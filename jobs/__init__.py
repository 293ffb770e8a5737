"""Batch job scripts for the weak-scaling study (see jobs/README.md and jobs/render.py)."""
