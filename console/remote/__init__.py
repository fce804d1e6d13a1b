"""Reaching a running console from elsewhere: ``fl-console ctl`` and ``fl-console attach``.

``client.py`` holds the sockets (a DEALER to the console's control ROUTER, a SUB to its state
PUB); ``ctl.py`` is the scriptable command; ``attach.py`` the console's own screen fed remotely.
"""
