"""The Pilot helpers wait for workers to end; a worker cancelled because its screen closed has ended."""

from __future__ import annotations

import threading

from helpers.tui_app import async_test, settle
from textual import work
from textual.app import App
from textual.screen import Screen


class _Busy(Screen):
    def __init__(self, release: threading.Event):
        super().__init__()
        self.release = release

    def on_mount(self) -> None:
        self.wait_in_a_thread()

    @work(thread=True)
    def wait_in_a_thread(self) -> None:
        self.release.wait(timeout=30)


@async_test
async def test_settle_outlasts_a_worker_cancelled_when_its_screen_closes():
    release = threading.Event()

    class Host(App):
        def on_mount(self) -> None:
            self.push_screen(_Busy(release))

    app = Host()
    async with app.run_test() as pilot:
        await pilot.pause()
        assert isinstance(app.screen, _Busy) and list(app.workers)
        # The screen closes while settle waits on its worker (as a completed run opens another screen).
        worker = next(iter(app.workers))
        wait = worker.wait

        async def close_the_screen_then_wait():
            app.pop_screen()
            return await wait()

        worker.wait = close_the_screen_then_wait
        try:
            await settle(pilot, 1)
        finally:
            release.set()
        assert not isinstance(app.screen, _Busy)
