"""tunelab: decide, prepare, fine-tune, evaluate and serve language models — the OpenAI fine-tuning API
as the interface, open models trained locally.

The package is layered; each layer imports only the layers below it (pyproject.toml states it as an
import-linter contract, and the test run checks it):

    cli/                          the `tunelab` command: one module per command group; parse → call one library function → draw its events
    server/ remote/               `tunelab serve` (OpenAI's API, its SQLite store, the job worker and its supervisor) | jobs on a remote server, migration
    eval/ train/ export/ advise/  evaluation | the training recipe | verified exports | the decision framework
    data/ graders/                the data toolkit: validate a whole file, convert formats, count tokens, cost, split | OpenAI's graders: a reply and its item in, a reward out
    models/                       resolve a model spec (offline first), load it on a device in a dtype, generate replies, the environment report
    runs/                         the run directory (the only code that knows its layout) and the job record
    conversation/                 OpenAI's chat schema, the JSONL reader, chat templates, the renderer, Problem
    core/                         settings (one typed model for flags, YAML and the API), events, atomic files, process settings

Nothing outside cli/ prints or imports rich: library code reports through the events it is given
(core/events.py), so the command line draws them, a run records them, and the server will store them.
"""

__version__ = "0.1.0"
