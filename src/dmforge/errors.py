"""The one exception type a user ever sees: a paragraph that says what went wrong and what to do."""


class DmforgeError(Exception):
    """A problem the user can fix. The CLI prints the message as is, with no traceback.

    `exit_code` follows the CLI's contract: 1 for problems in the user's data, 2 for usage errors.
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
