"""`python -m tunelab.cli …`, as `accelerate launch -m tunelab.cli train …` needs."""

from tunelab.cli.app import run

if __name__ == "__main__":  # not when a process spawned by this one imports it (multiprocessing's "spawn")
    run()
