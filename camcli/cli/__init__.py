"""The ``camcli`` command line: parse options, call one library function, show the result.

Only this package talks to the terminal. Each command is parse -> job -> show; library errors
become a one-line message and an exit status in one place, :func:`camcli.cli.app.report_errors`.

- ``app``: the Typer app, usage errors, the error handler, ``--version``;
- ``output``: the stderr console, notes, progress; ``options``: the option groups;
- ``rows``: result rows and tables; one module per command family: ``train``, ``images``
  (predict, overlay), ``evaluate``, ``compare``, ``listings`` (export, models, layers, info).
"""

from camcli.cli import compare, evaluate, images, listings, train  # noqa: F401  (each registers its commands)
from camcli.cli.app import app, main

__all__ = ["app", "main"]
