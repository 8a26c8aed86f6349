"""The short crash run in CI (bench/crash is the long one): SIGKILLs lose nothing.

Two storescu senders of 6 one-image studies each (small synthetic hips, the demo
model scoring them), the node SIGKILLed twice at random moments while images
arrive and results are made and delivered to a real Orthanc.
"""

from __future__ import annotations

from pathlib import Path

from tests.crashrun import run_crash, small_sources


def test_sigkills_lose_no_acknowledged_instance_and_duplicate_no_result(tmp_path: Path) -> None:
    sources = small_sources(tmp_path / "sources", 6, seed=20241128)
    report = run_crash(
        tmp_path / "run",
        sources,
        senders=2,
        per_sender=6,
        kills=2,
        seed=7,
        kill_every=(1.0, 4.0),
        drain_timeout=600,
    )
    print("\n".join(report.lines()))
    assert report.kills >= 2
    assert len(report.acknowledged) == 12  # every sender got every study in, eventually
    assert report.lost == []
    assert report.missing_results == []
    assert report.duplicates == 0
    assert report.archive_results >= 12  # an SR per study at least
