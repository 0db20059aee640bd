"""The one exception type for user errors (bad file, bad option).

Its message is a single line naming the file or option and the problem; the CLI
prints it and exits with code 2, without a traceback.
"""


class WMHError(ValueError):
    """A user error: the message is one line that names the file or option."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
