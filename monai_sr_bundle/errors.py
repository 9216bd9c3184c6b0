"""The one exception type for bad user input, so every surface can tell it apart from a bug."""


class InputError(ValueError):
    """Raised for input the user can fix: the message is one actionable sentence that names the input."""
