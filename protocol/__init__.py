"""What master, agents, workers and user code share."""

from protocol.client import ClientProtocol

__version__ = "0.1.0"

__all__ = ["ClientProtocol", "__version__"]
