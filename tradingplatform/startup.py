"""What a long-running process (a web server's worker, a Celery worker) does once it has set up Django.

A full garbage collection walks every object the collector tracks. A loaded platform holds
about 130,000-150,000 of them (modules, classes, URL patterns, schemas, templates), nearly all
alive for the life of the process, and walking them paused every thread of a web worker for
70-95 ms on the reference machine, about once per thousand orders under load: a stall in every
latency percentile from the 99th up. ``gc.freeze()`` moves what exists at that point into the
permanent generation, which collections skip; they then walk only what was made since, which is
little and short-lived. The frozen objects are never collected, which is what they would be
anyway: they live as long as the process.
"""

import gc


def app_loaded() -> None:
    """Import every URLconf, view and API module now (not on the first request), then freeze the heap."""
    from django.urls import get_resolver

    get_resolver().url_patterns  # noqa: B018  (imports the root URLconf, and with it every included one)
    gc.freeze()
