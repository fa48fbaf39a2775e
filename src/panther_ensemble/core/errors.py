"""The one error type the command line turns into a single clear line on stderr."""


class PantherError(Exception):
    """A problem with the user's input, spec or weights: message says which file and what is wrong."""
