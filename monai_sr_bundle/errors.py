"""The one exception type for bad user input, so every surface can tell it apart from a bug."""


class InputError(ValueError):
    """Raised for input the user can fix: the message is one actionable sentence that names the input."""


def innermost(e: BaseException) -> BaseException:
    """The innermost cause of ``e``: the error a library wrapped (MONAI's config parser, its Compose and ignite
    re-raise the error of the class or step that failed)."""
    while e.__cause__ is not None:
        e = e.__cause__
    return e


def first_line(e: BaseException) -> str:
    """The first line of the innermost cause of ``e``: the sentence a library wrapped."""
    e = innermost(e)
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
