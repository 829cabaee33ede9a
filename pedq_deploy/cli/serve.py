"""``pedq-serve``: the MRD streaming server for FIRE / OpenRecon (needs the mrd extra: ismrmrd)."""

from __future__ import annotations

import click

from ..backends import BACKENDS
from ._common import entry_point, print_config_option, settings_from


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address; loopback unless you say otherwise.")
@click.option("--port", default=9002, show_default=True, type=click.IntRange(0, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64), help="Series processed at once.")
@click.option("--models", "models_dir", type=click.Path(file_okay=False), help="Models folder (default: $PEDQ_MODELS or shipped).")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True)
@click.option("--no-models", is_flag=True, help="Load no networks (conventional pipelines only).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML or JSON file of pipeline settings.")
@print_config_option
def command(host, port, workers, models_dir, backend, no_models, config_path):
    """Serve MRD clients: GRE magnitude + phase images in, QSM images (ppb) out.

    Config names: pedq (the default pipeline, with --config's settings), pedq-net, pedq-tkd, pedq-tv
    (the same settings with that inversion).
    """
    try:
        import ismrmrd  # noqa: F401
    except ImportError as exc:
        from ..errors import InputError

        raise InputError(f"pedq-serve needs the mrd extra (pip install 'pedq-deploy[mrd]'): {exc}") from None
    from ..mrd.server import MrdServer

    server = MrdServer(
        host, port, workers=workers, models_dir=models_dir, backend=backend, no_models=no_models, settings=settings_from(config_path)
    )
    try:
        server.serve_forever()
    finally:
        server.shutdown()


main = entry_point(command, "pedq-serve")


if __name__ == "__main__":
    main()
