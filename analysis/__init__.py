"""Analysis of the scaling results table (flight_parsl/results/table.py): summaries and figures.

``analysis.scaling`` loads the table, summarizes trials and draws the Flight Artifact-1 scaling
figure; ``analysis/scaling.ipynb`` does the same in a notebook, run headless with
``python analysis/run_notebook.py``. See analysis/README.md.
"""
