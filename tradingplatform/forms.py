"""What the platform's forms share."""


def watch_changes(form, names) -> None:
    """Have ``form``'s page post the values it showed beside what it sends (hidden initials), so
    that ``form.changed_data`` is what its user changed, and a save can write only that: writing
    back the rest as the page showed it would undo what someone else changed while it was open (a
    limit staff lowered, a strategy its trader paused through the API). A client posting no shown
    value (an older page, a script) is taken to change what it posts."""
    for name in names:
        if name in form.fields:
            form.fields[name].show_hidden_initial = not form.is_bound or form[name].html_initial_name in form.data
