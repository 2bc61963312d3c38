"""The Typer app: one-line usage errors, the one place library errors become an exit status, ``--version``."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable
from typing import Annotated

import typer
from rich.text import Text
from typer.core import TyperArgument, TyperGroup

from camcli import __version__
from camcli.cli.output import LAST_PROGRESS, VERDICT, err, flag, reader_gone
from camcli.errors import CamcliError, first_line, flag_names, missing_extra, os_error, suggestions
from camcli.files import printable

# click's exception classes (typer vendors click, and exports only some of them)
ClickException, UsageError = (next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)
                                 for name in ("ClickException", "UsageError"))


class PlainArgument(TyperArgument):
    """An argument as usage lines conventionally show it (``INPUT...``), not as typer does
    (``{input}...`` on the usage line, ``input <list[str]>`` in the help)."""

    def _rich_display_name(self) -> str:
        return self.display_name_raw.upper() + ("..." if self.nargs != 1 else "")

    def _usage_display_name(self) -> str:
        return self._rich_display_name() if self.required else f"[{self._rich_display_name()}]"

    def display_type(self, ctx) -> str:
        return ""


class OneLineErrors(TyperGroup):
    """Usage errors (an unknown option, a value outside the choices) in one line, exit 2, as every
    other camcli error; click would print the usage, a hint and the error on four lines."""

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        for param in getattr(command, "params", ()):
            if type(param) is TyperArgument:
                param.__class__ = PlainArgument
        return command

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare `camcli` or `camcli predict`: the help
                exc.show()
            else:
                named = [a for a in (sys.argv[1:] if args is None else args) if a in self.commands][:1]
                command = exc.ctx.command_path if exc.ctx is not None else " ".join([prog_name or "camcli", *named])
                if type(exc).__name__ == "NoSuchOption" and exc.ctx is not None:  # click's guesses share letters, not words
                    known = [o for p in exc.ctx.command.params for o in p.opts if o.startswith("--")]
                    exc.possibilities = suggestions(exc.option_name, known)
                message = " ".join(exc.format_message().replace("Value error, ", "").split())
                err.print(Text.assemble(("error:", "red"), " ", printable(f"{message} (see {command} --help)")))
            sys.exit(exc.exit_code)
        except ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except typer.Abort:
            err.print("Aborted!")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=OneLineErrors,
    help="Class Activation Mapping for PyTorch image classifiers: train a GAP + linear head, "
    "rank classes, and see where the model looks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,  # help text is plain text: "[default: 30]" and "[x0,y0,x1,y1]" stay as written
)

def report_errors(command: Callable) -> Callable:
    """Map library failures to one line on stderr and an exit status (the only place that does)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        VERDICT[0] = 0
        try:
            return command(*args, **kwargs)
        except BrokenPipeError:
            # the reader went away (camcli predict ... | head): stop quietly
            reader_gone()
            raise typer.Exit(VERDICT[0]) from None  # 0, or 4 when a requirement failed (judged before stdout)
        except (CamcliError, OSError, ImportError) as exc:
            if isinstance(exc, ImportError):  # an optional dependency no library call checked for: still one line
                exc = missing_extra(exc.name or first_line(exc), f"camcli {command.__name__}")
            if isinstance(exc, OSError):  # a file-system failure no library call turned into a CamcliError
                exc = os_error(exc, f"cannot use {exc.filename}" if exc.filename else "a file operation failed")
            # a mistake in the request (exit 2) says where the usage is explained; a refusal of the environment (3) does not
            message = flag_names(str(exc), flag)
            usage = f" (see camcli {command.__name__} --help)" if exc.exit_code == 2 and "--help" not in message else ""
            err.print(Text.assemble(("error:", "red"), " ", printable(message + usage)))
            if getattr(exc, "exit_now", False):  # a thread stuck in native code (Ray's connection) would crash the exit
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(exc.exit_code)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            stage, done, total = LAST_PROGRESS.get("stage"), LAST_PROGRESS.get("done", 0), LAST_PROGRESS.get("total")
            counting = LAST_PROGRESS.get("counting", "images")
            where = f" during {stage}: {done}" + (f" of {total}" if total else "") + f" {counting} done" if stage else ""
            err.print(f"interrupted{where}{AFTER_INTERRUPT.get(command.__name__, '')}")
            raise typer.Exit(130) from None

    return wrapper

AFTER_INTERRUPT = {  # what a Ctrl-C leaves behind, per command
    "train": "; the run is incomplete: train again (with --exist-ok for the same --out)",
    "predict": "; the rows written so far are complete (rerun the rest: there is no resume)",
    "overlay": "; every file on disk is complete (overlay --skip-existing resumes)",
    "evaluate": "; nothing was written (metrics are written at the end)",
    "export": "; nothing was written",
}


def show_version(value: bool) -> None:
    if value:
        typer.echo(f"camcli {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=show_version, is_eager=True, help="Show the version and exit.")] = False,
) -> None:
    """camcli: see where an image classifier looks."""


def main() -> None:
    """Console-script entry point."""
    # file names that are not UTF-8 reach stdout (csv, jsonl) as the bytes they are on disk
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(errors="surrogateescape")
    app(prog_name="camcli")
