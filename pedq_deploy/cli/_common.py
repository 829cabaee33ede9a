"""What every pedq command shares: one-line errors with exit code 2, SIGTERM cleanup, progress."""

from __future__ import annotations

import signal
import sys
import time

import click

from ..errors import PedqError

__all__ = ["entry_point", "StageProgress", "echo_err", "print_config_option", "settings_from", "pipeline_options"]


def echo_err(msg: str) -> None:
    click.echo(msg, err=True)


def _sigterm(signum, frame):  # turn SIGTERM into SystemExit so staged outputs are removed
    raise SystemExit(128 + signum)


def entry_point(command: click.Command, prog: str):
    """Wrap a click command: no traceback for the user's mistakes, exit code 2 for them."""

    def main(argv: list[str] | None = None) -> None:
        signal.signal(signal.SIGTERM, _sigterm)
        try:
            command.main(args=argv, prog_name=prog, standalone_mode=False)
        except click.exceptions.Abort:
            echo_err(f"{prog}: aborted")
            sys.exit(130)
        except click.ClickException as exc:
            echo_err(f"{prog}: error: {exc.format_message()}")
            sys.exit(2)
        except PedqError as exc:
            echo_err(f"{prog}: error: {exc}")
            sys.exit(2)
        except MemoryError:
            echo_err(f"{prog}: error: out of memory")
            sys.exit(2)
        except OSError as exc:  # disk full, permissions, a vanished file: the system's reason, one line
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            echo_err(f"{prog}: error: {exc.strerror or exc}{where}")
            sys.exit(2)
        except KeyboardInterrupt:
            echo_err(f"{prog}: interrupted")
            sys.exit(130)

    return main


class StageProgress:
    """Prints one line per pipeline stage to stderr: ``[2/4] unwrap ... 0.12 s``."""

    def __init__(self, stages: tuple[str, ...], quiet: bool = False):
        self.stages = stages
        self.quiet = quiet
        self._t = time.perf_counter()

    def __call__(self, stage: str, event: str) -> None:
        if stage == "plan":  # the pipeline says which stages will run
            self.stages = tuple(event.split(","))
            return
        if self.quiet:
            return
        n = self.stages.index(stage) + 1 if stage in self.stages else 0
        if event == "start":
            click.echo(f"[{n}/{len(self.stages)}] {stage} ...", err=True, nl=False)
        else:
            click.echo(f" {float(event.split()[1]):.2f} s", err=True)


def _print_config(ctx: click.Context, _param, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from ..config import default_config_text

    click.echo(default_config_text())
    ctx.exit(0)


print_config_option = click.option(
    "--print-config",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_config,
    help="Print the default settings as a config file (TOML, one comment per setting) and exit.",
)


def settings_from(config_path: str | None, inversion: str | None = None) -> dict:
    """The pipeline settings of a --config file (none: every default), with --inversion over it."""
    from ..config import read_config_file

    settings = read_config_file(config_path) if config_path else {}
    if inversion is not None:
        settings["inversion"] = inversion
    return settings


def pipeline_options(command):
    """--inversion, --config, --models and --backend: what every door into the pipeline takes."""
    from ..backends import BACKENDS
    from ..config import INVERSIONS

    options = [
        click.option("--inversion", type=click.Choice(INVERSIONS), help="Overrides the config's (default auto)."),
        click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML or JSON file of pipeline settings."),
        click.option(
            "--models",
            "models_dir",
            type=click.Path(file_okay=False),
            help="Folder of exported models, or 'none' (default: $PEDQ_MODELS, else the shipped ones).",
        ),
        click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True),
    ]
    for option in reversed(options):  # click applies decorators bottom-up: keep the help's order
        command = option(command)
    return command
