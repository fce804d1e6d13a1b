"""The exit codes scripts and the README rely on, each with its help, in one table."""

from __future__ import annotations

from console.cli import build_parser as console_parser
from node.cli import build_parser as node_parser
from transport.exit_codes import ExitCode


def test_documented_codes_keep_their_numbers_and_each_number_means_one_thing() -> None:
    assert (ExitCode.OK, ExitCode.RUN_FAILED, ExitCode.USAGE) == (0, 1, 2)
    assert (ExitCode.REJECTED, ExitCode.UNREACHABLE) == (3, 4)  # fl-node, in the README
    assert len({int(code) for code in ExitCode}) == len(ExitCode.__members__)
    assert all(code.help for code in ExitCode)


def test_help_of_both_clis_lists_their_codes_from_the_table() -> None:
    node_help = node_parser().format_help()
    for code in (ExitCode.OK, ExitCode.USAGE, ExitCode.REJECTED, ExitCode.UNREACHABLE):
        assert f"  {int(code)}  {code.help}" in node_help
    console_help = console_parser().format_help()
    for code in (ExitCode.OK, ExitCode.RUN_FAILED, ExitCode.USAGE):
        assert f"  {int(code)}  {code.help}" in console_help
