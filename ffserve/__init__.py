"""FerrousForge server: serves stored artifacts over the Ollama and OpenAI APIs (docs/serving.md)."""

__version__ = "0.1.0"
