"""tunelab: decide, prepare, fine-tune, evaluate and serve language models — the OpenAI fine-tuning API
as the interface, open models trained locally.

The package is layered; each layer imports only the layers below it (pyproject.toml states it as an
import-linter contract, and the test run checks it):

    cli/            the `tunelab` command: parse → call one library function → draw its events (rich)
    server/         `tunelab serve`: OpenAI's API (FastAPI), its SQLite store, auth and limits
    eval/ train/    evaluation (generate, score, report) | the training recipe (setup → fit → save)
    data/           the data toolkit: validate a whole file, convert formats, count tokens, cost, split
    models/         resolve a model spec, load it on a device in a dtype, generate replies
    runs/           the run directory (the only code that knows its layout) and the job record it holds
    conversation/   OpenAI's chat schema, the JSONL reader, chat templates, the renderer, Problem
    core/           settings, events, atomic files, process-wide settings

Nothing outside cli/ prints or imports rich: library code reports through the events it is given
(core/events.py), so the command line draws them, a run records them, and the server will store them.
"""

__version__ = "0.1.0"
