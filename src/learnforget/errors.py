"""One exception type for bad user input: the CLI prints it as one line, without a traceback."""


class UserError(Exception):
    """Bad input from the user (a file, a line, a field, an option). The message names where."""
