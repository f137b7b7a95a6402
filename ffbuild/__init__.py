"""FerrousForge compiler: Modelfile → build plan → stages → OCI artifacts."""

__version__ = "0.1.0"
