"""`tunelab env` (this machine, for a bug report) and `tunelab cache` (the converted models it keeps).

    tunelab env [--json]
    tunelab cache list   ·   tunelab cache clear [NAME…]
"""

from __future__ import annotations

import json

import typer

from tunelab.cli.common import CONTEXT, examples, fail, say

cache_app = typer.Typer(help="The model cache: converted models kept for fast loading. List or clear it.",
                        no_args_is_help=True, context_settings=CONTEXT, rich_markup_mode=None,
                        epilog=examples("tunelab cache list", "tunelab cache clear"))


def _size_text(size: int) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"


def env(as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")) -> None:
    """Versions, CPU (bf16 units or not), GPUs, cache sizes and the environment variables tunelab reads:
    paste it into a bug report. Keys are shown as set, never by value."""
    from tunelab.models.environment import environment

    report = environment()
    if as_json:
        print(json.dumps(report, indent=2))
        return
    cpu = report["cpu"]
    say(f"tunelab {report['tunelab']} · Python {report['python']} · {report['platform']}")
    say("packages: " + ", ".join(f"{name} {version}" for name, version in report["packages"].items() if version))
    missing = [name for name, version in report["packages"].items() if not version]
    if missing:
        say("not installed: " + ", ".join(missing))
    say(f"cpu: {cpu['name']}, {cpu['cores']} cores ({cpu['torch_threads']} torch threads), "
        f"bf16 units: {'yes' if cpu['bf16'] else 'no (bf16 is emulated: auto picks fp32)'}, "
        f"{' '.join(cpu['isa']) or 'no AVX2'}; torch kernels: {cpu['torch_capability']}")
    for gpu in report["gpus"]:
        say(f"gpu {gpu['index']}: {gpu['name']}, {gpu['memory_gib']} GiB, compute {gpu['capability']}, "
            f"bf16: {'yes' if gpu['bf16'] else 'no (auto picks fp16)'}")
    if not report["gpus"]:
        say(f"gpu: none (device: {report['device']})")
    cache = report["cache"]
    say(f"cache: {cache['path']}, {len(cache['models'])} model(s), {_size_text(cache['bytes'])}")
    for name, value in report["environment"].items():
        say(f"  {name}={value}")


@cache_app.command("list", epilog=examples("tunelab cache list", "tunelab cache list --json"))
def cache_list(as_json: bool = typer.Option(False, "--json", help="Print the cached models as JSON.")) -> None:
    """The converted models in the cache, largest first, with their sizes."""
    from dataclasses import asdict

    from tunelab.models.environment import cached_models
    from tunelab.models.resolve import cache_dir

    models = cached_models()
    if as_json:
        print(json.dumps({"path": str(cache_dir()), "models": [asdict(m) for m in models]}, indent=2))
        return
    for model in models:
        say(f"{_size_text(model.bytes):>10}  {model.name}  ({model.path})")
    say(f"{len(models)} model(s), {_size_text(sum(m.bytes for m in models))} in {cache_dir()}")


@cache_app.command("clear", epilog=examples("tunelab cache clear", "tunelab cache clear gemma-3-270m"))
def cache_clear(
    names: list[str] = typer.Argument(None, metavar="[NAME]...", help="Cached models to remove (default: all)."),
    as_json: bool = typer.Option(False, "--json", help="Print what was removed as JSON."),
) -> None:
    """Remove converted models from the cache; each is converted again the next time it is used."""
    from dataclasses import asdict

    from tunelab.models.environment import clear_cached_models

    try:
        removed = clear_cached_models(names or None)
    except ValueError as error:
        fail(str(error))
    if as_json:
        print(json.dumps({"removed": [asdict(m) for m in removed]}, indent=2))
        return
    say(f"removed {len(removed)} model(s), {_size_text(sum(m.bytes for m in removed))}"
        + (": " + ", ".join(m.name for m in removed) if removed else ""))
