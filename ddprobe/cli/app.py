"""The root Typer app: global options, error handling, and command registration (built-in and plugins)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import typer

from .. import __version__

if TYPE_CHECKING:
    import pluggy

app = typer.Typer(
    name="ddprobe",
    help="Probe what a distilled dataset really contains. Start with: ddprobe run specs/study.toml",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _plain_metavars() -> None:
    """Help as click writes it: flags without a ``<bool>`` type and arguments as ``SPEC``, not ``{spec}``.

    Newer typer releases label every flag with its Python type and wrap required arguments in braces; both read
    as syntax to type. Guarded, so a typer without these hooks keeps its own rendering (tests/test_cli_help.py
    checks the result).
    """
    from typer import core

    option = getattr(core, "TyperOption", None)
    if option is not None and hasattr(option, "display_type_rich"):
        shown = option.display_type_rich

        def display_type_rich(self, ctx):
            return None if getattr(self, "is_flag", False) and self.metavar is None else shown(self, ctx)

        option.display_type_rich = display_type_rich
    argument = getattr(core, "TyperArgument", None)
    if argument is not None and hasattr(argument, "_usage_display_name"):
        def _usage_display_name(self):
            name = self.metavar or self.name.upper()
            name = name if self.required else f"[{name}]"
            return name + ("..." if self.nargs != 1 else "")

        argument._usage_display_name = _usage_display_name


_plain_metavars()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ddprobe {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Show the version and exit."),
) -> None:
    """Probe what a distilled dataset really contains."""


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print an error (no traceback unless DDPROBE_DEBUG=1) and return the Exit to raise."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(message)}", highlight=False)
    if os.environ.get("DDPROBE_DEBUG"):
        import traceback

        traceback.print_exc()
    return typer.Exit(code)


def _register() -> None:
    from ..plugins import load_plugins
    from . import init, inspect, inspect_file, run  # noqa: F401  (modules add their commands to ``app``)

    pm = load_plugins()
    from . import cache, compare, plan  # noqa: F401  (listed after run and distill in --help)
    for warning in add_plugin_commands(app, pm):
        print(f"warning: {warning}", file=sys.stderr)


def add_plugin_commands(target: typer.Typer, pm: pluggy.PluginManager) -> list[str]:
    """Call each plugin's ``register_commands`` on ``target``; one that raises is a warning naming the plugin,
    and every other command (ddprobe's and other plugins') stays available."""
    warnings = []
    for impl in reversed(pm.hook.register_commands.get_hookimpls()):
        try:
            impl.function(app=target)
        except Exception as exc:
            warnings.append(f"plugin {impl.plugin_name!r}: register_commands raised {type(exc).__name__}: {exc}")
    return warnings


_register()


def main() -> None:
    from ..errors import DDProbeError

    try:
        app()
    except DDProbeError as exc:  # any command: a problem ddprobe can explain is a message and exit 2, no traceback
        sys.exit(fail(str(exc), 2).exit_code)
    except KeyboardInterrupt:
        print("interrupted: everything computed so far is cached; run the same command again to resume",
              file=sys.stderr)
        sys.exit(130)
