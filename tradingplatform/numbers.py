"""Numbers typed or sent as text, read the same way at every entry point.

Python's ``int()`` and ``Decimal()`` (and so Django's number fields and pydantic's) take ``_`` as
a digit separator: "1_5" is 15, "1_400" is 1400. No trader writes a number so; one who typed
"1_5" meant no such number (a slip for 1.5), and a copy multiplier of 15 or an order of ten times
the size is the wrong order. Such text is refused, naming the field, wherever a number is read.
"""

from django import forms
from django.db import models

SEPARATOR_MESSAGE = "Enter the number without '_'."


def separated(value) -> bool:
    """Text with ``_`` in it: not a number here, whatever ``int()`` or ``Decimal()`` make of it."""
    return isinstance(value, str) and "_" in value


def no_separators(value):
    """``value`` as it is, or a ValueError (what pydantic and argparse report) for text with ``_``."""
    if separated(value):
        raise ValueError(SEPARATOR_MESSAGE)
    return value


class TooLongNumber:
    """A JSON integer of more digits than Python reads (``sys.get_int_max_str_digits``, 4300), as
    ``json_int`` leaves it: no field takes it, and its refusal names the field it was sent in."""

    MESSAGE = "This number is too long to be read."

    def __repr__(self):
        return "TooLongNumber()"


def json_int(text: str):
    """``json.loads``'s ``parse_int``: the integer, or a TooLongNumber (not a ValueError that
    makes the whole body unreadable, naming no field)."""
    try:
        return int(text)
    except ValueError:
        return TooLongNumber()


def too_long(value):
    """A field's value (or an item of it) that was a TooLongNumber: a ValueError saying so."""
    if isinstance(value, TooLongNumber) or (
        isinstance(value, list) and any(isinstance(v, TooLongNumber) for v in value)
    ):
        raise ValueError(TooLongNumber.MESSAGE)
    return value


class PlainNumberMixin:
    """A form's number field that refuses text with ``_`` (an error on the field)."""

    def to_python(self, value):
        if separated(value):
            raise forms.ValidationError(SEPARATOR_MESSAGE, code="invalid")
        return super().to_python(value)


class IntegerField(PlainNumberMixin, forms.IntegerField):
    pass


class DecimalField(PlainNumberMixin, forms.DecimalField):
    pass


# A ModelAdmin's (and a ModelForm's) number fields as these: ``formfield_overrides = NUMBER_FIELDS``.
NUMBER_FIELDS = {
    models.IntegerField: {"form_class": IntegerField},
    models.DecimalField: {"form_class": DecimalField},
}


def formfield(db_field, **kwargs):
    """A ModelForm's ``formfield_callback``: its number fields refuse text with ``_``."""
    for kind, overrides in NUMBER_FIELDS.items():
        if isinstance(db_field, kind):
            return db_field.formfield(**{**overrides, **kwargs})
    return db_field.formfield(**kwargs)
