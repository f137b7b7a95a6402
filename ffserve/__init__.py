"""FerrousForge server: serves stored artifacts over the Ollama, OpenAI and Open Inference v2 APIs."""

__version__ = "0.1.0"
