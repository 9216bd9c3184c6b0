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


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\n`` -> ``\\\\n``): a file name cannot forge lines of a report."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in str(text))


def shown(value, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters: a refusal names what it got without echoing a 400-digit
    number or a 60 KB string back."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def brief_errors() -> None:
    """Make an uncaught error caused by bad input print one sentence (``error: ...``) instead of a traceback:
    the bundle configs call this first in ``run``, as ``python -m monai.bundle`` has no hook of its own. Any
    other error keeps its traceback (a bug must stay visible)."""
    import sys

    previous = sys.excepthook
    if getattr(previous, "brief", False):  # a second run in one process
        return

    def hook(kind, value, tb):
        e, seen = value, set()
        while e is not None and not isinstance(e, InputError) and id(e) not in seen:
            seen.add(id(e))
            e = e.__cause__ or e.__context__
        if not isinstance(e, InputError):
            previous(kind, value, tb)
        else:
            print(f"error: {printable(e)}", file=sys.stderr)

    hook.brief = True
    sys.excepthook = hook
