"""`serve`: the HTTP API under uvicorn, in one or several worker processes."""

from __future__ import annotations

import os

import click

from healthmate_features.cli._common import handles_errors, main, profile_option, settings


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Worker processes (uvicorn's); each builds its own app. Around one per core.",
)
@profile_option
@handles_errors
def serve_cmd(host: str, port: int, workers: int, profile: str | None) -> None:
    """Serve the HTTP API with uvicorn (Bearer API keys; OpenAPI docs at /docs).

    Each worker process builds its app from the environment (the settings of this command,
    exported as HM_* variables); key revocations, audit rows and metrics are shared through the
    SQL store and the metrics directory (PROMETHEUS_MULTIPROC_DIR), so every worker answers alike."""
    import uvicorn

    from healthmate_features.backends import open_sql_store

    config = settings(profile)
    open_sql_store(config).close()  # reachable and migrated before any worker starts (a clear error if not)
    os.environ.update(config.to_env())  # what create_app_from_env reads in each worker
    uvicorn.run(
        "healthmate_features.api.app:create_app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
    )
