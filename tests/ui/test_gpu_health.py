"""What a GPU user sees: MFU and the GPU's health on the dashboard's key figures, and utilisation,
power and temperature per GPU in the header, which still fits at 80 columns."""

from __future__ import annotations

from helpers.tui_app import GIB, async_test, fill_store, make_app, settle
from tui.backend import Backend, GpuInfo
from tui.feed import DashboardFeed
from tui.widgets.status import StatusLine, gpu_text


def test_key_figures_show_mfu_and_gpu_health(workspace):
    store = fill_store(workspace)
    feed = DashboardFeed(Backend(workspace, store_override=store), "r-fixed-0005", max_points=100)
    figures = dict(feed.read().figures)
    assert "MFU" not in figures and "GPU" not in figures  # a run that logged none (a CPU run)
    store.add_metrics("r-fixed-0005", [(125, "mfu", 0.418, 0.0), (125, "tflops", 413.4, 0.0),
                                       (125, "gpu_util", 87.0, 0.0), (125, "gpu_power_w", 612.3, 0.0),
                                       (125, "gpu_temp_c", 71.0, 0.0)])
    figures = dict(feed.read().figures)
    assert figures["MFU"] == "41.8% · 413 TFLOP/s"
    assert figures["GPU"] == "87% · 612 W · 71 °C"


def test_key_figures_without_a_peak_or_some_readings(workspace):
    store = fill_store(workspace)
    store.add_metrics("r-fixed-0005", [(125, "tflops", 12.0, 0.0), (125, "gpu_temp_c", 40.0, 0.0)])
    figures = dict(DashboardFeed(Backend(workspace, store_override=store), "r-fixed-0005").read().figures)
    assert figures["MFU"] == "— · 12 TFLOP/s"  # a GPU missing from the peak table
    assert figures["GPU"] == "40 °C"


def test_gpu_text():
    gpu = GpuInfo(0, "NVIDIA H100 80GB HBM3", 30 * GIB, 80 * GIB, 87, 612.3, 71)
    assert gpu_text(gpu) == "GPU0 87% 30.0/80.0 GiB 612W 71°C"
    assert gpu_text(gpu, health=False) == "GPU0 30.0/80.0 GiB"
    assert gpu_text(GpuInfo(1, "MIG 1g.10gb", GIB, 10 * GIB)) == "GPU1 1.0/10.0 GiB"  # nothing more reported


@async_test
async def test_header_shows_gpu_health_and_fits_at_80_columns(workspace):
    fill_store(workspace)
    app = make_app(workspace)
    gpus = [GpuInfo(i, "NVIDIA H100 80GB HBM3", 30 * GIB, 80 * GIB, 87, 612.3, 71) for i in range(2)]
    app.backend.gpu_probe = lambda: gpus
    async with app.run_test(size=(160, 40)) as pilot:
        await settle(pilot)
        app.refresh_now()
        await settle(pilot)
        line = app.screen.query_one(StatusLine).line().plain
        assert "GPU0 87% 30.0/80.0 GiB 612W 71°C GPU1 87% 30.0/80.0 GiB 612W 71°C" in line and "queue 2" in line
        await pilot.resize_terminal(80, 24)
        await settle(pilot)
        status = app.screen.query_one(StatusLine)
        line = status.line().plain
        # Health goes before the queue length and the memory: the line stays whole.
        assert len(line) <= status.content_region.width
        assert "GPU0 30.0/80.0 GiB GPU1 30.0/80.0 GiB" in line and "queue 2" in line and "612W" not in line


@async_test
async def test_dashboard_key_figures_show_mfu_and_gpu_health_whole(workspace):
    from helpers.tui_app import FIXED_NOW, screen_text, until

    from tui.screens.dashboard import DashboardScreen

    store = fill_store(workspace)
    store.add_metrics("r-fixed-0005", [(120, "mfu", 0.418, FIXED_NOW), (120, "tflops", 413.4, FIXED_NOW),
                                       (120, "gpu_util", 87.0, FIXED_NOW), (120, "gpu_power_w", 612.3, FIXED_NOW),
                                       (120, "gpu_temp_c", 71.0, FIXED_NOW)])
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        app.open_run("r-fixed-0005")
        await until(pilot, lambda: isinstance(app.screen, DashboardScreen) and app.screen.run is not None, "the dashboard")
        await settle(pilot)
        text = screen_text(app)
        for expected in ("MFU         41.8% · 413 TFLOP/s", "GPU         87% · 612 W · 71 °C", "setup"):
            assert expected in text, expected
