"""What the run leaves behind and what the operator sees of it (no sockets, no Textual).

- ``view.py``: :class:`ConsoleView`, the rows the console renders (a view, built on demand).
- ``records.py``: :class:`RunRecords`, the figures beyond the coordinator's state (bytes,
  stages, losses, aggregate hashes) that feed the rows and the run summary.
- ``eventlog.py``: ``events.jsonl``, one JSON object a line, and the log pane's tail.
- ``replay.py``: ``--replay``: views read back from ``events.jsonl``.
- ``export.py``: ``--metrics-csv``: one row per round and client.
"""
