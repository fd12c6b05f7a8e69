"""Background work: ``Batch`` gathers the items added while its last call ran into its next call."""

import threading

import pytest

from tradingplatform import background, logs


class Recorder:
    """A batch function that records each call's items; ``hold`` keeps a call running until released."""

    def __init__(self, *, fail_on=None):
        self.calls: list[list] = []
        self.threads: set[str] = set()
        self.request_ids: list = []
        self.running = 0
        self.most_running = 0
        self.hold = threading.Event()
        self.hold.set()
        self.started = threading.Event()
        self.fail_on = fail_on
        self._lock = threading.Lock()

    def __call__(self, items):
        with self._lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            self.calls.append(list(items))
            self.threads.add(threading.current_thread().name)
            self.request_ids.append(logs.current_request_id())
        self.started.set()
        try:
            assert self.hold.wait(10)
            if self.fail_on in items:
                raise RuntimeError(f"item {self.fail_on} is bad")
        finally:
            with self._lock:
                self.running -= 1


def test_items_added_while_a_call_runs_go_to_the_next_call_together_in_order():
    fn = Recorder()
    batch = background.Batch(fn)
    fn.hold.clear()
    batch.add(1)
    assert fn.started.wait(10)
    for item in range(2, 7):
        batch.add(item)  # the first call is still running: these wait for the next one
    fn.hold.set()
    assert background.wait_idle(10)

    assert fn.calls == [[1], [2, 3, 4, 5, 6]]
    assert fn.most_running == 1  # one call at a time, though the lane has several threads
    assert all(name.startswith("background-") for name in fn.threads)


def test_an_idle_batch_handles_each_item_at_once_alone():
    fn = Recorder()
    batch = background.Batch(fn)
    for item in range(3):
        batch.add(item)
        assert background.wait_idle(10)
    assert fn.calls == [[0], [1], [2]]


def test_a_call_takes_at_most_max_items_and_the_rest_follow():
    fn = Recorder()
    batch = background.Batch(fn, max_items=2)
    fn.hold.clear()
    batch.add(0)
    assert fn.started.wait(10)
    for item in range(1, 6):
        batch.add(item)
    fn.hold.set()
    assert background.wait_idle(10)
    assert fn.calls == [[0], [1, 2], [3, 4], [5]]


def test_a_call_that_raises_is_logged_and_the_next_call_still_runs(caplog):
    fn = Recorder(fail_on=2)
    batch = background.Batch(fn)
    fn.hold.clear()
    batch.add(1)
    assert fn.started.wait(10)
    batch.add(2)
    batch.add(3)
    fn.hold.set()
    assert background.wait_idle(10)
    batch.add(4)
    assert background.wait_idle(10)

    assert fn.calls == [[1], [2, 3], [4]]
    assert "item 2 is bad" in caplog.text


def test_a_call_carries_no_request_id_of_the_requests_its_items_came_from():
    fn = Recorder()
    batch = background.Batch(fn)
    token = logs.request_id_var.set("req-batch-1")
    try:
        batch.add(1)
    finally:
        logs.request_id_var.reset(token)
    assert background.wait_idle(10)
    assert fn.request_ids == [None]


@pytest.mark.django_db
def test_inside_a_transaction_the_item_is_handled_at_once_in_the_callers_thread():
    fn = Recorder()
    background.Batch(fn).add("now")
    assert fn.calls == [["now"]]
    assert fn.threads == {threading.current_thread().name}
