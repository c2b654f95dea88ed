"""What every CLI command shares: consoles, one-line errors, progress bars."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from medsight.core.errors import MedsightError

__all__ = ["err", "friendly", "out", "progress_bar", "state"]

# soft wrap: long messages stay on one line (scripts and tests grep them); tables still fit
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
state = {"debug": False}

F = TypeVar("F", bound=Callable[..., Any])


_NUMPY_REPR = re.compile(r"\bnp\.(?:float|int|uint|bool|complex|str)_?\d*\((.*?)\)")


def plain(message: str) -> str:
    """A message as a user reads numbers: ``np.float64(0.991)`` (NumPy 2's repr in a list) shows ``0.991``;
    escaped for rich, so that ``pip install 'medsight[dist]'`` keeps its brackets."""
    return escape(_NUMPY_REPR.sub(r"\1", message))


def reflow_help(app: typer.Typer) -> None:
    """Join the lines of each paragraph of every command's help (its docstring), in ``app`` and its
    groups: typer keeps a docstring's line breaks after the first paragraph, so the text would break
    at the source's width inside the terminal's. A paragraph starting with ``\\b`` is kept as written."""
    import inspect

    for info in app.registered_commands:
        text = info.help or (inspect.getdoc(info.callback) if info.callback is not None else None)
        if text:
            paragraphs = text.split("\n\n")
            info.help = "\n\n".join(p if p.startswith("\b") else " ".join(p.split()) for p in paragraphs)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            reflow_help(group.typer_instance)


def friendly(fn: F) -> F:
    """Turn library errors into one red line and exit status 1 (traceback with --debug)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except MedsightError as exc:
            if state["debug"]:
                raise
            err.print(f"[bold red]error:[/] {type(exc).__name__}: {plain(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except Exception as exc:  # a bug, or an environment problem: still one line by default
            if state["debug"]:
                raise
            err.print(
                f"[bold red]error:[/] unexpected {type(exc).__name__}: {plain(str(exc))} "
                "(run with --debug for the traceback)",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress bar on stderr (terminal only) fed by the library's progress callbacks.

    ``enabled=False`` (e.g. every process but the first under torchrun) shows nothing. A
    stage written ``"name | detail"`` keeps one row for ``name`` and shows the latest detail
    (e.g. the running loss), instead of a new row per message.
    """
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not (enabled and err.is_terminal),
        auto_refresh=False,  # no refresh thread: phantom generation forks worker processes
    )
    tasks: dict[str, TaskID] = {}

    def update(stage: str, done: int, total: int) -> None:
        key = stage.split(" | ", 1)[0]
        if key not in tasks:
            tasks[key] = bar.add_task(stage, total=total)
        bar.update(tasks[key], completed=done, total=total, description=stage)
        bar.refresh()

    with bar:
        yield update
