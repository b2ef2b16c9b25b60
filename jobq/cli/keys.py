"""`jobq keys`: the REST API's keys (create, list, revoke)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from jobq.cli.options import DbUrl, _settings, service


keys = typer.Typer(
    help="API keys of the REST API: create, list, revoke. While no key exists the API is open "
    "(and answers on loopback addresses only).",
    no_args_is_help=True,
)


def _key_json(key: Any) -> dict[str, Any]:
    return {
        "prefix": key.prefix, "name": key.name, "queues": list(key.queues),
        "scopes": list(key.scopes), "created_at": key.created_at.isoformat(),
        "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
    }


@keys.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="What the key is for, e.g. 'billing app'")],
    queue: Annotated[list[str], typer.Option(
        "--queue", help="A queue the key may use (repeat for more); '*' for every queue")],
    scope: Annotated[list[str], typer.Option(
        "--scope", help="enqueue, read or admin (repeat for more); admin implies the others")],
    database_url: DbUrl = None,
) -> None:
    """Create an API key and print its token, once: only a hash of it is kept."""
    with service(_settings(database_url=database_url)) as svc:
        key, token = svc.create_key(name, queue, scope)
    typer.echo(token)
    typer.echo(
        f"created API key {key.prefix} ({key.name!r}; queues {','.join(key.queues)}; scopes "
        f"{','.join(key.scopes)}). The token above is shown only now: store it safely.",
        err=True,
    )


@keys.command("list")
def keys_list(
    database_url: DbUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """List API keys (never their secrets), revoked ones included."""
    from rich.console import Console
    from rich.table import Table

    with service(_settings(database_url=database_url)) as svc:
        found = svc.list_keys()
    if as_json:
        typer.echo(json.dumps([_key_json(k) for k in found], indent=2))
        return
    table = Table(title=f"API keys ({sum(k.active for k in found)} active)")
    table.add_column("prefix", no_wrap=True, min_width=12)
    for col in ("name", "queues", "scopes", "created", "last used", "revoked"):
        table.add_column(col, overflow="fold")
    for k in found:
        table.add_row(
            k.prefix, k.name, ",".join(k.queues), ",".join(k.scopes),
            *(t.strftime("%Y-%m-%d %H:%M") if t else "-"
              for t in (k.created_at, k.last_used_at, k.revoked_at)),
        )
    Console().print(table)


@keys.command("revoke")
def keys_revoke(
    prefix: Annotated[str, typer.Argument(help="The key's prefix (as `jobq keys list` shows)")],
    database_url: DbUrl = None,
) -> None:
    """Revoke an API key; API processes refuse it within JOBQ_API_KEY_CACHE_SECONDS."""
    with service(_settings(database_url=database_url)) as svc:
        key = svc.revoke_key(prefix)
        still_active = svc.keys_configured()
    typer.echo(f"revoked API key {key.prefix} ({key.name!r})")
    if not still_active:
        typer.secho(
            "no active API key is left: the API is open again (on loopback addresses only, "
            "unless JOBQ_ALLOW_OPEN_API=true)", fg="yellow", err=True,
        )
