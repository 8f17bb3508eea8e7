"""The `emoadapt` command: ``parser`` holds every verb's flags, ``commands`` what each verb does, and :func:`main`
turns every failure into one line and a distinct exit code, never a traceback unless ``--debug``."""
from __future__ import annotations

import os
import sys
import traceback

from ..errors import EXIT_INTERRUPTED, describe_failure
from . import commands
from .parser import build_parser


RESUMABLE = ("extract", "pretrain", "finetune", "cv", "demo")  # verbs whose work is kept and resumed
EXIT_CLOSED_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a tool whose reader went away (`| head -1`)


def _closed_pipe() -> int:
    """The reader of our output went away (``| head -1``, ``| true``): stop quietly, as other tools do. Python
    would also complain when it flushes stdout at exit; point stdout at /dev/null first."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return EXIT_CLOSED_PIPE


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done; 1 done, but some inputs failed (each listed); 2 refused: bad arguments, bad input or an
    environment that cannot do the work (disk full, no permission, no CUDA), with one line saying what to do;
    3 internal error (a bug: ``--debug`` or ``EMOADAPT_DEBUG=1`` shows the traceback); 130 interrupted; 141 the
    reader of the output went away (a closed pipe)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("EMOADAPT_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    args = build_parser().parse_args(argv)  # argparse exits 2 on bad arguments itself
    try:
        code = getattr(commands, f"cmd_{args.command}")(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except BrokenPipeError:
        return _closed_pipe()
    except KeyboardInterrupt:
        what = ("re-run the same command to resume" if args.command in RESUMABLE
                else "nothing was kept; run it again")
        print(f"emoadapt {args.command}: interrupted; {what}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # noqa: BLE001 - the one place every failure becomes a line and an exit code
        if debug:
            traceback.print_exc()
        code, message = describe_failure(error)
        print(f"emoadapt {args.command}: {message}", file=sys.stderr)
        return code
