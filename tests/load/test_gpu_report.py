"""deploy/gpu-report.sh, the one command that produces every benchmark figure against a real
model, run here in its quick mode against the stand-in engine: each step runs, its output lands
in the Markdown report with the plot, and what cannot be measured is listed."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bot.tools.standin import ScriptedEngine

SCRIPT = Path(__file__).parents[2] / "deploy" / "gpu-report.sh"


async def test_the_quick_report_has_every_section_and_the_plot(tmp_path: Path) -> None:
    engine = ScriptedEngine("one two three four five six", keep_requests=False)
    async with engine.serving() as url:
        run = await asyncio.create_subprocess_exec(
            *("bash", str(SCRIPT), "--quick", "--no-install", "--engine-url", url, "--out", str(tmp_path)),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(run.communicate(), 300)
    assert run.returncode == 0, out.decode()[-2000:]
    report = (tmp_path / "report.md").read_text()
    assert "model `standin`" in report and "quick mode" in report
    for title in (
        "Throughput and Parley's added time, 2 conversations",
        "Throughput and Parley's added time, 4 conversations",
        "Through the real server, 2 web visitors",
        "Through the real server, 4 web visitors",
        "Long conversations",
        "Capacity of one Parley process",
    ):
        assert f"## {title}" in report
    assert report.count("throughput ratio") == 4 and report.count("4 answered, 0 errors") == 1
    assert "capacity: the highest offered rate" in report
    assert (tmp_path / "sweep.png").read_bytes().startswith(b"\x89PNG") and "](sweep.png)" in report
    not_measured = report.split("## Not measured", 1)[1]
    assert "first visible update" in not_measured and "failed" not in not_measured
