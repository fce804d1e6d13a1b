"""The console's widgets; each renders one part of a ConsoleView and nothing else."""

from console.app.widgets.chart import MetricsChart
from console.app.widgets.clients import ClientsTable
from console.app.widgets.eventlog import EventLogView
from console.app.widgets.header import RunHeader
from console.app.widgets.rounds import RoundsTable, WitnessPanel

__all__ = [
    "ClientsTable",
    "EventLogView",
    "MetricsChart",
    "RoundsTable",
    "RunHeader",
    "WitnessPanel",
]
