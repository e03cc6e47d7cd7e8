"""Exports of a run for use outside tunelab — merged weights, GGUF, Ollama, the adapter — each verified
against the run's own model before it is kept (run.py orchestrates; merged.py, gguf_file.py, ollama.py
build; verify.py compares)."""

# The export formats, here rather than in run.py so that naming them (the server's task requests) needs
# nothing of the exporters.
FORMATS = ("merged", "gguf", "ollama", "adapter")
