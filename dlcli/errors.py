"""Errors a user can act on. The CLI prints them as one line and exits 2; no traceback."""

import signal


class DlcliError(Exception):
    """Bad usage or bad input: an unknown name, a bad value, an unreadable file."""

    exit_code = 2


class TrainingFailed(DlcliError):
    """Training stopped on its own (a NaN loss, say); the last good checkpoint is kept."""

    exit_code = 1


def did_you_mean(kind: str, name: str, choices) -> str:
    choices = sorted(choices)
    return f"unknown {kind} {name!r}; choose one of: {', '.join(choices)}"


class Interrupted(Exception):
    """Ctrl-C, SIGTERM or SIGHUP during training, raised after the checkpoint was saved
    (path None: a worker under torchrun other than rank 0, which saved it)."""

    def __init__(self, path, signum: int = signal.SIGINT):
        super().__init__(str(path))
        self.path = path
        self.exit_code = 128 + int(signum)  # what a shell reports for that signal
