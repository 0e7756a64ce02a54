"""purrgan's one error type: a message a user can act on, shown by the CLI as a single line."""


class PurrganError(Exception):
    """A problem with the user's input or environment, with a one-line message that says what to do."""
