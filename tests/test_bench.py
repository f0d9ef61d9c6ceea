"""`parley bench` and `parley bench history` end to end on a small load: every run happens and every
figure is printed.
(The figures themselves are measurements, read by people, not asserted by tests.)"""

import argparse
import gc
import re

import pytest

from bot.tools.bench import add_arguments, run_bench
from bot.tools.history import add_arguments as add_history_arguments
from bot.tools.history import run_history

pytestmark = pytest.mark.engine


async def test_bench_runs_both_paths_and_prints_every_figure(make_settings, engine, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["-k", "2", "-t", "3", "--max-tokens", "4", "--rounds", "2"])
    try:
        await run_bench(make_settings(llm_url=engine), args, lambda line: None)
    finally:
        gc.unfreeze()  # the bench freezes its process's heap, as `parley serve` does
    out = capsys.readouterr().out
    assert "6 (2 conversations x 3 turns, 4 tokens each), 2 rounds of both" in out
    throughputs = [float(x) for x in re.findall(r"throughput (?:direct|through Parley)\s+median\s+([\d.]+)", out)]
    assert len(throughputs) == 2 and all(t > 0 for t in throughputs)
    ratios = re.search(r"Parley / direct in each round: ([\d. ]+)\)", out).group(1).split()
    assert len(ratios) == 2 and all(float(r) > 0 for r in ratios)
    assert re.search(r"Parley time per turn\s+p50 [\d.]+ ms\s+p99 [\d.]+ ms\s+mean [\d.]+ ms\s+\(12 turns\)", out)
    for path in ("direct", "parley"):
        assert re.search(
            rf"prefix-cache hit rate {path}\s+all turns\s+[\d.]+%\s+turns 1-2\s+[\d.]+%\s+turns 3\+\s+[\d.]+%", out
        )


def test_bench_arguments_must_be_positive():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--rounds", "0"])


async def test_bench_history_runs_both_cuts_and_prints_their_hit_rates(make_settings, engine, capsys):
    parser = argparse.ArgumentParser()
    add_history_arguments(parser)
    args = parser.parse_args(["-k", "2", "-t", "6", "--budget", "40", "--max-tokens", "8", "--rounds", "2"])
    await run_history(make_settings(llm_url=engine), args, lambda line: None)
    out = capsys.readouterr().out
    for name in ("compaction", "sliding window"):
        found = re.search(rf"^{name}\s+([\d.]+)%\s+([\d.]+)%\s+(\d+)% (\d+)%\s+(\d+)$", out, re.M)
        assert found, out
        assert all(0 <= float(found.group(n)) <= 100 for n in range(1, 5)) and int(found.group(5)) > 0
