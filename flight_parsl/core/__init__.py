"""Types and utilities both sides share (coordinator and slots): weights, model
specs, workload and outcome types, errors, memory measurement. Imports no torch."""
