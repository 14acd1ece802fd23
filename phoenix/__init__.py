"""PhoenixFL: real-time IoT traffic classification with a federated model."""

__version__ = "0.1.0"
