"""Every exit code of ``fl-console``, ``fl-node`` and the data server, with what it means.

One table (Flower keeps its exit codes and their help together the same way): a CLI returns an
:class:`ExitCode` and lists the ones it can give in its ``--help`` with :func:`exit_code_help`.
The numbers are part of the interface (scripts and tests check them): never renumber one.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    help: str

    def __new__(cls, value: int, help: str) -> ExitCode:
        code = int.__new__(cls, value)
        code._value_ = value
        code.help = help
        return code

    OK = 0, "done: the run finished, the command succeeded, or a clean stop (Ctrl+C)"
    RUN_FAILED = 1, "the run ended before it was Finished, or the console crashed"
    USAGE = 2, "bad arguments, config or key file, or a port in use: nothing was started"
    REJECTED = (
        3,
        "refused or removed by the console (wrong run id, kicked, banned, a key not allowed), "
        "or a ctl request refused (wrong state, unknown node, a setting the rules refuse)",
    )
    UNREACHABLE = (
        4,
        "the console or the data server did not answer in time (--join-timeout, ctl --timeout)",
    )
    BIND = 5, "the data server cannot bind its address (e.g. the port is in use)"
    CANNOT_TRAIN = 6, "the node cannot train as asked (a device it lacks, a model DP-SGD refuses)"
    DENIED = (
        7,
        "ctl: you may not act on this console (with CURVE your key is not in [security] "
        "operators; without CURVE you are not on its machine)",
    )


def exit_code_help(*codes: ExitCode) -> str:
    """An ``--help`` epilog listing ``codes`` (use ``RawDescriptionHelpFormatter``)."""
    return "exit codes:\n" + "\n".join(f"  {int(code)}  {code.help}" for code in codes)
