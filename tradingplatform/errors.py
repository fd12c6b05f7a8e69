"""One way to turn a ValidationError into the API's error fields."""

from django.core.exceptions import ValidationError


def first_error(error: ValidationError) -> tuple[str | None, str, str | None]:
    """(field or None, message, code) of the first problem in a ValidationError."""
    if hasattr(error, "error_dict"):
        field, errors = next(iter(error.error_dict.items()))
        message = " ".join(text for item in errors for text in item.messages)
        return (None if field == "__all__" else field), message, errors[0].code
    return None, " ".join(error.messages), getattr(error, "code", None)
