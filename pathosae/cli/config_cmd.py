"""`pathosae config`: print a config, resolved and commented, every key with its meaning."""

from __future__ import annotations

import typer

from pathosae.cli._app import ConfigOption, app


@app.command("config")
def config_command(config: ConfigOption = None) -> None:
    """Print the resolved config (built-in defaults, or --config validated) as commented YAML."""
    from pathosae.config import config_yaml, resolve_config

    typer.echo(config_yaml(resolve_config(config)), nl=False)
