"""`serve`: the HTTP API under uvicorn."""

from __future__ import annotations

import click

from healthmate_features.cli._common import handles_errors, main, profile_option, settings


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@profile_option
@handles_errors
def serve_cmd(host: str, port: int, profile: str | None) -> None:
    """Serve the HTTP API with uvicorn (Bearer API keys; OpenAPI docs at /docs)."""
    import uvicorn

    from healthmate_features.api.app import create_app

    uvicorn.run(create_app(settings(profile)), host=host, port=port)
