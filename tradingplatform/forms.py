"""What the platform's forms share."""

import uuid

from django import forms


class OneTimeTokenForm(forms.Form):
    """A form whose every rendering carries a one-time token: the same form sent twice (a double
    click, a resubmit) is one request to the service, which keys what it makes on the token."""

    token = forms.UUIDField(
        widget=forms.HiddenInput,
        error_messages={"required": "This form is out of date; check it and submit again."},
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.is_bound:
            self.initial.setdefault("token", uuid.uuid4())

    def renew_token(self) -> None:
        """A fresh token for a form shown again after its token was refused."""
        self.data = self.data.copy()
        self.data["token"] = str(uuid.uuid4())


def watch_changes(form, names) -> None:
    """Have ``form``'s page post the values it showed beside what it sends (hidden initials), so
    that ``form.changed_data`` is what its user changed, and a save can write only that: writing
    back the rest as the page showed it would undo what someone else changed while it was open (a
    limit staff lowered, a strategy its trader paused through the API). A client posting no shown
    value (an older page, a script) is taken to change what it posts."""
    for name in names:
        if name in form.fields:
            form.fields[name].show_hidden_initial = not form.is_bound or form[name].html_initial_name in form.data
