"""The console's side of the wire and its disk: everything the coordinator does not own.

- ``server.py``: :class:`ConsoleServer`, the only place console-side sockets live (PUB state,
  ROUTER control); it feeds messages to the coordinator, ticks it and broadcasts the state.
- ``requests.py``: :class:`NodeRequests`, its base: each node request checked and answered.
- ``security.py``: CURVE for the console: its keys, the node allowlist, refusals logged.
- ``checkpoint.py``: safetensors weights + coordinator state, written atomically, read back verified.
- ``history.py``: settled rounds stored once in round-history files the saved state lists.
- ``settings.py``: live settings: data.toml edited with tomlkit, checked, written (``.bak``).
- ``spawn.py``: the local child processes (``[local] spawn`` nodes, the data server).
"""

from console.server.server import ConsoleServer
from console.server.settings import SettingsResult

__all__ = ["ConsoleServer", "SettingsResult"]
