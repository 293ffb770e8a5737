"""Federated-learning logic, free of execution concerns: strategies, aggregation,
client sampling and the round policy. Slots import the aggregation part."""
