"""A local model-serving endpoint for tests, benchmarks and the demo.

It answers the OpenAI and Databricks wire formats from a deterministic
simulator and injects latency, rate caps and faults on demand.
"""

from .cli import main
from .process import ServerProcess
from .simulate import simulated_answer, simulated_embedding, simulated_json, simulated_prediction

__all__ = [
    "ServerProcess",
    "main",
    "simulated_answer",
    "simulated_embedding",
    "simulated_json",
    "simulated_prediction",
]
