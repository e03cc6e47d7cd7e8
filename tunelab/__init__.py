"""tunelab: decide, prepare, fine-tune, evaluate and serve language models — the OpenAI fine-tuning API
as the interface, open models trained locally."""

__version__ = "0.1.0"
