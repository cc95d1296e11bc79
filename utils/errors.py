"""User-facing errors: one line naming the file (and line) at fault, never a traceback from deep inside torch."""
import sys


class UserError(Exception):
    """Bad input from the user: a cfg, label, .data, weights or checkpoint file, or a flag.

    The message is one line and starts with the file (``path:line:`` where a line is known).
    """


def at(path, line, message):
    """Build a ``UserError`` for ``path:line: message`` (line may be None)."""
    where = f"{path}:{line}" if line is not None else f"{path}"
    return UserError(f"{where}: {message}")


def cli(main):
    """Run an entry script's ``main()``; a ``UserError`` prints ``error: ...`` and exits with status 2."""
    try:
        return main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint written is complete; rerun with --resume", file=sys.stderr)
        sys.exit(130)
