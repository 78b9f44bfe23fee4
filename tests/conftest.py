"""Set-up shared by the core, integration and framework tests (plugins have their own)."""

import signal


def pytest_configure(config):
    # A suite started in the background by a shell without job control (`nox &` in a script,
    # nohup, some CI runners) inherits an ignored SIGINT, and so does every child it starts:
    # Python then never raises KeyboardInterrupt, and the Trainer rightly leaves an ignored
    # SIGINT alone. The interrupt tests stand for a user's Ctrl-C, so they get Python's own
    # handler back (a child started from here then gets the default action, as from a shell).
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
