"""The one exception type users see: a single sentence saying what was wrong and what to do."""


class EmocircuitsError(ValueError):
    """Bad user input (a model spec, a data file, an index, a config key).

    The message is one sentence: what was wrong, the valid range or known names, and what to do.
    The CLI prints it without a traceback and exits with code 2.
    """
