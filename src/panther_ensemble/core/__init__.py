"""The bottom layer: the one error type the command line turns into a line on stderr, and logging and stage timing.
Imports nothing of the package."""
