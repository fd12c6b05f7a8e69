import re
from pathlib import Path

from django.conf import settings

# Django's {# #} comment ends at the line's end: one spanning lines is sent to the browser as text.
MULTILINE_COMMENT = re.compile(r"\{#(?:(?!#\}).)*$", re.MULTILINE)


def test_no_template_comment_spans_lines():
    """A multi-line {# #} once reached the browser inside a websocket push, and the tag named in
    its text (<template>) swallowed the order row the push carried."""
    offenders = []
    for path in sorted(Path(settings.BASE_DIR).glob("**/templates/**/*.html")):
        if ".venv" in path.parts:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if MULTILINE_COMMENT.search(line):
                offenders.append(f"{path.relative_to(settings.BASE_DIR)}:{number}")
    assert not offenders, "use {% comment %} for comments over several lines: " + ", ".join(offenders)
