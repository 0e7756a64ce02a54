"""purrgan's one error type: a message a user can act on, shown by the CLI as a single line."""


class PurrganError(Exception):
    """A problem with the user's input or environment, with a one-line message that says what to do."""


class ReportedElsewhere(PurrganError):
    """An error that rank 0 of a multi-process run reports; the other ranks stop with it without repeating it."""
