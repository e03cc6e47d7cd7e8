"""`tunelab keys`, `tunelab projects`, `tunelab audit`: a server's projects, their keys and its audit log,
managed on its data directory (the server may be running; the admin routes do the same over HTTP).

    tunelab projects create search-team --max-jobs 2 --data-dir /srv/tunelab
    tunelab keys create --project search-team --name ci --data-dir /srv/tunelab    # the key, shown once
    tunelab keys list --project search-team --data-dir /srv/tunelab
    tunelab keys revoke key_… --data-dir /srv/tunelab
    tunelab audit --data-dir /srv/tunelab --project search-team
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Optional

import typer

from tunelab.cli.common import CONTEXT, examples, fail, out, say
from tunelab.cli.serve import DATA_DIR_OPTION, data_home

JSON_OPTION = typer.Option(False, "--json", help="Print JSON instead of a table.")
PROJECT_OPTION = typer.Option("default", "--project", metavar="NAME", help="The project (its name or id).")

keys_app = typer.Typer(help="API keys of a server's projects: create (shown once), list, revoke.",
                       no_args_is_help=True, context_settings=CONTEXT, rich_markup_mode=None,
                       epilog=examples("tunelab keys create --project search-team --data-dir /srv/tunelab"))
projects_app = typer.Typer(help="A server's projects: each has its own files, jobs, models, keys and limits.",
                           no_args_is_help=True, context_settings=CONTEXT, rich_markup_mode=None,
                           epilog=examples("tunelab projects create search-team --max-jobs 2 --data-dir /srv/tunelab"))


def _store(data_dir: Optional[Path]):
    from tunelab.server.store import NewerDatabase, Store

    home = data_home(data_dir)
    if not (home / "tunelab.db").is_file():
        fail(f"{home}: no tunelab serve database here (tunelab.db); give the --data-dir the server uses")
    try:
        return Store(home)
    except (NewerDatabase, sqlite3.Error, OSError) as error:
        fail(f"{home}: {error}")


def _project(store, name: str):
    from tunelab.server.projects import ProjectError, project_named

    try:
        return project_named(store, name)
    except ProjectError as error:
        fail(str(error))


def _when(timestamp) -> str:
    return datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M") if timestamp else "-"


@keys_app.command("create", epilog=examples("tunelab keys create --project search-team --name ci",
                                            "tunelab keys create --project search-team --json | jq -r .key"))
def keys_create(project: str = PROJECT_OPTION,
                name: Optional[str] = typer.Option(None, "--name", metavar="TEXT", help="What the key is for."),
                data_dir: Optional[Path] = DATA_DIR_OPTION, as_json: bool = JSON_OPTION) -> None:
    """A new key for the project, printed once: it is stored only as a hash."""
    from tunelab.server.projects import ProjectError, create_key

    store = _store(data_dir)
    chosen = _project(store, project)
    try:
        key, token = create_key(store, chosen.id, name)
    except ProjectError as error:
        fail(str(error))
    if as_json:
        print(json.dumps({**key, "project": chosen.name, "key": token}, indent=2))
        return
    print(token)
    say(f"{key['id']} of project {chosen.name}: shown once, kept only as a hash. Use it as OPENAI_API_KEY; "
        f"revoke it with `tunelab keys revoke {key['id']}`.")


@keys_app.command("list", epilog=examples("tunelab keys list --project search-team"))
def keys_list(project: str = PROJECT_OPTION, data_dir: Optional[Path] = DATA_DIR_OPTION,
              as_json: bool = JSON_OPTION) -> None:
    """The project's keys (redacted), when each was made and last used, and which are revoked."""
    from rich.table import Table

    from tunelab.server.projects import list_keys

    store = _store(data_dir)
    chosen = _project(store, project)
    keys = list_keys(store, chosen.id)
    if as_json:
        print(json.dumps({"object": "list", "project": chosen.name, "data": keys}, indent=2))
        return
    table = Table(box=None)
    for header in ("key", "name", "value", "created", "last used", "revoked"):
        table.add_column(header, no_wrap=header in ("key", "value"))
    for key in keys:
        table.add_row(key["id"], key["name"] or "", key["redacted_value"], _when(key["created_at"]),
                      _when(key["last_used_at"]), _when(key["revoked_at"]))
    out.print(table)
    if not keys:
        say(f"Project {chosen.name} has no keys; make one with `tunelab keys create --project {chosen.name}`")


@keys_app.command("revoke", epilog=examples("tunelab keys revoke key_0123456789abcdef01234567"))
def keys_revoke(key_id: str = typer.Argument(..., metavar="KEY_ID", help="The key's id (tunelab keys list)."),
                data_dir: Optional[Path] = DATA_DIR_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Revoke a key: the next request with it is refused, even on a running server."""
    from tunelab.server.projects import ProjectError, revoke_key

    try:
        key = revoke_key(_store(data_dir), key_id)
    except ProjectError as error:
        fail(str(error))
    if as_json:
        print(json.dumps(key, indent=2))
    else:
        say(f"{key_id}: revoked")


def _limit_options(max_jobs, max_storage_gb, requests_per_minute) -> dict:
    limits = {"max_jobs": max_jobs, "requests_per_minute": requests_per_minute,
              "max_stored_bytes": None if max_storage_gb is None else int(max_storage_gb * 2**30)}
    return {name: value for name, value in limits.items() if value is not None}


MAX_JOBS = typer.Option(None, "--max-jobs", min=1, metavar="N", help="Jobs not yet finished at once.")
MAX_STORAGE = typer.Option(None, "--max-storage-gb", min=0, metavar="X", help="Files stored, in GiB.")
RATE = typer.Option(None, "--requests-per-minute", min=1, metavar="N", help="Requests per minute per key.")


def _show_project(project, as_json: bool, verb: str) -> None:
    if as_json:
        print(json.dumps(project.as_object(), indent=2))
    else:
        say(f"{project.name} ({project.id}) {verb}")


@projects_app.command("create", epilog=examples("tunelab projects create search-team --max-jobs 2"))
def projects_create(name: str = typer.Argument(..., metavar="NAME"), max_jobs: Optional[int] = MAX_JOBS,
                    max_storage_gb: Optional[float] = MAX_STORAGE, requests_per_minute: Optional[int] = RATE,
                    data_dir: Optional[Path] = DATA_DIR_OPTION, as_json: bool = JSON_OPTION) -> None:
    """A new project, with its own limits (else the server's)."""
    from tunelab.server.projects import Limits, ProjectError, create_project

    try:
        project = create_project(_store(data_dir), name, Limits(**_limit_options(max_jobs, max_storage_gb,
                                                                                  requests_per_minute)))
    except ProjectError as error:
        fail(str(error))
    _show_project(project, as_json, "created; give it a key: tunelab keys create --project " + name)


@projects_app.command("list", epilog=examples("tunelab projects list", "tunelab projects list --json"))
def projects_list(include_archived: bool = typer.Option(False, "--all", help="Archived projects too."),
                  data_dir: Optional[Path] = DATA_DIR_OPTION, as_json: bool = JSON_OPTION) -> None:
    """The projects, their limits and what they hold."""
    from rich.table import Table

    from tunelab.server.projects import list_projects

    store = _store(data_dir)
    projects = list_projects(store, include_archived)
    held = {row["project_id"]: (row["jobs"], row["files"], row["bytes"]) for row in store.execute(
        "SELECT projects.id AS project_id, (SELECT COUNT(*) FROM jobs WHERE project_id = projects.id) AS jobs, "
        "(SELECT COUNT(*) FROM files WHERE project_id = projects.id) AS files, "
        "(SELECT COALESCE(SUM(bytes), 0) FROM files WHERE project_id = projects.id) AS bytes FROM projects")}
    if as_json:
        print(json.dumps({"object": "list", "data": [dict(p.as_object(), jobs=held[p.id][0], files=held[p.id][1],
                                                          stored_bytes=held[p.id][2]) for p in projects]}, indent=2))
        return
    table = Table(box=None)
    for header in ("project", "id", "jobs", "files", "stored", "max jobs", "max storage", "requests/min", "status"):
        table.add_column(header, no_wrap=header in ("project", "id"))
    for p in projects:
        jobs, files, stored = held[p.id]
        limit = p.limits
        table.add_row(p.name, p.id, str(jobs), str(files), f"{stored / 2**20:.1f} MB",
                      str(limit.max_jobs or "-"), f"{limit.max_stored_bytes / 2**30:g} GiB" if limit.max_stored_bytes
                      is not None else "-", str(limit.requests_per_minute or "-"),
                      "archived" if p.archived_at else "active")
    out.print(table)


@projects_app.command("limits", epilog=examples("tunelab projects limits search-team --max-jobs 4 --max-storage-gb 100"))
def projects_limits(name: str = typer.Argument(..., metavar="NAME"), max_jobs: Optional[int] = MAX_JOBS,
                    max_storage_gb: Optional[float] = MAX_STORAGE, requests_per_minute: Optional[int] = RATE,
                    data_dir: Optional[Path] = DATA_DIR_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Change a project's limits (those not given stay as they are)."""
    from tunelab.server.projects import ProjectError, update_project

    store = _store(data_dir)
    try:
        project = update_project(store, _project(store, name).id,
                                 limits=_limit_options(max_jobs, max_storage_gb, requests_per_minute))
    except ProjectError as error:
        fail(str(error))
    _show_project(project, as_json, "limits changed")


@projects_app.command("archive", epilog=examples("tunelab projects archive search-team"))
def projects_archive(name: str = typer.Argument(..., metavar="NAME"), data_dir: Optional[Path] = DATA_DIR_OPTION,
                     as_json: bool = JSON_OPTION) -> None:
    """Archive a project: its keys stop working; its files, jobs and runs stay."""
    from tunelab.server.projects import ProjectError, archive_project

    store = _store(data_dir)
    try:
        project = archive_project(store, _project(store, name).id)
    except ProjectError as error:
        fail(str(error))
    _show_project(project, as_json, "archived")


def audit(project: Optional[str] = typer.Option(None, "--project", metavar="NAME", help="Only this project's rows."),
          limit: int = typer.Option(50, "--limit", "-n", min=1, metavar="N", help="Rows shown, newest first."),
          data_dir: Optional[Path] = DATA_DIR_OPTION, as_json: bool = JSON_OPTION) -> None:
    """The server's audit log: each request that changed something, who made it and how it ended."""
    from rich.table import Table

    from tunelab.server.audit import audit_object, audit_rows
    from tunelab.server.projects import list_projects

    store = _store(data_dir)
    names = {p.id: p.name for p in list_projects(store, include_archived=True)}
    rows = audit_rows(store, _project(store, project).id if project else None, limit)
    objects = [audit_object(row, names) for row in rows]
    if as_json:
        print(json.dumps({"object": "list", "data": objects}, indent=2))
        return
    table = Table(box=None)
    for header in ("when", "project", "key", "action", "object", "status"):
        table.add_column(header, no_wrap=header in ("when", "key", "object"))
    for row, shown in zip(rows, objects):
        table.add_row(datetime.fromtimestamp(row["created_at"]).strftime("%Y-%m-%d %H:%M:%S"),
                      names.get(row["project_id"], "-"), row["key_id"] or "-", shown["type"],
                      row["object_id"] or "", str(row["status"]))
    out.print(table)


AUDIT_EXAMPLES = examples("tunelab audit --data-dir /srv/tunelab", "tunelab audit --project search-team --json")
