"""`python -m tunelab.cli …`, as `accelerate launch -m tunelab.cli train …` needs."""

from tunelab.cli.app import run

run()
