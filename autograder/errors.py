"""Errors a check raises. Each message says what was expected and what came back."""


class CheckFailed(AssertionError):
    """The student's code did something other than what the exercise asks for."""


class ServerStartError(CheckFailed):
    """The student's server did not start, or did not start in time."""


class Timeout(CheckFailed):
    """The student's code did not finish within its time limit."""


class NotAnswered(CheckFailed):
    """The exercise still raises NotImplementedError: the student has not written it yet."""
