"""The `emoadapt` command: ``parser`` holds every verb's flags, ``commands`` what each verb does, and :func:`main`
turns every failure into one line and a distinct exit code, never a traceback unless ``--debug``."""
from __future__ import annotations

import os
import sys
import traceback

from ..errors import EXIT_INTERRUPTED, describe_failure
from . import commands
from .parser import build_parser


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done; 1 done, but some inputs failed (each listed); 2 refused: bad arguments, bad input or an
    environment that cannot do the work (disk full, no permission, no CUDA), with one line saying what to do;
    3 internal error (a bug: ``--debug`` or ``EMOADAPT_DEBUG=1`` shows the traceback); 130 interrupted."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("EMOADAPT_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    args = build_parser().parse_args(argv)  # argparse exits 2 on bad arguments itself
    try:
        return getattr(commands, f"cmd_{args.command}")(args)
    except KeyboardInterrupt:
        print(f"emoadapt {args.command}: interrupted; re-run the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 - the one place every failure becomes a line and an exit code
        if debug:
            traceback.print_exc()
        code, message = describe_failure(error)
        print(f"emoadapt {args.command}: {message}", file=sys.stderr)
        return code
