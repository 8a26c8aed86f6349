"""The node's results as a radiologist sees them in OHIF, the open web viewer.

Real processes over loopback: Orthanc with its DICOMweb plugin and deploy/orthanc's
router, a real ``triage-node serve`` (demo model), the OHIF build from npm (pinned
and verified, tests/viewer/ohif.py) served same-origin by tests/viewer/server.py,
and Debian's chromium driven headless by Playwright. Two studies go through the
node: one with both hips assessed, one with one side not assessable. For each, in
OHIF: both result series are listed in the study browser; the SR opens with no error
(no page error, no console error, no error toast, no "Something went wrong"), and
draws one ROI polyline per assessed side whose label holds that side's probability;
the heatmap opens and renders in colour. Screenshots are kept under the test's
temporary directory (their paths are printed).

.ci/run installs what this needs: orthanc-dicomweb and chromium (apt), Playwright
(the [test] extra; its own browser download is never used), and the OHIF build
(``python3 -m tests.viewer.ohif``).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from playwright.sync_api import Browser, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from tests.peers import (
    REPO,
    NodeProcess,
    OrthancServer,
    base_config,
    free_port,
    run_cli,
    wait_for,
    write_config,
)
from tests.viewer import ohif
from tests.viewer.server import ViewerServer, viewer_server

SAMPLES = REPO / "samples"
# Both hips assessed; only the left hip in the image (the right is not assessable).
STUDIES = ["01_osteoporotic_jpegls", "06_unilateral_left_implicit"]
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
RESULT_PREFIX = "AI triage"
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--enable-unsafe-swiftshader",  # WebGL on the CPU: there is no GPU
    # Nothing but loopback: no background traffic from the browser itself.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
# Generous: first loads of the 200 MB build on a shared 2-core machine are slow.
LOAD_SECONDS = 180
NUDGE_SECONDS = 15

# Installed in every page before OHIF starts: records error toasts (sonner, OHIF's
# notifications) and error-boundary pages however briefly they are shown.
WATCH_ERRORS = """
window.__triageErrors = [];
new MutationObserver(() => {
  const seen = window.__triageErrors;
  const note = text => { if (!seen.includes(text)) seen.push(text); };
  const toasts = document.querySelectorAll('[data-sonner-toast][data-type="error"]');
  for (const t of toasts) note('error toast: ' + t.innerText.trim().slice(0, 200));
  const body = document.body ? document.body.innerText : '';
  const at = body.indexOf('Something went wrong');
  if (!toasts.length && at >= 0) note('page shows: ' + body.slice(at, at + 120));
}).observe(document, {childList: true, subtree: true, characterData: true});
"""

# What the SR viewport draws: the ROI polylines and the label texts (one line per
# tspan) in the viewport's SVG annotation layer.
SR_DRAWING = """pane => {
  const layer = pane.querySelector('svg.svg-layer');
  if (!layer) return null;
  return {
    polylines: layer.querySelectorAll('polyline').length,
    labels: [...layer.querySelectorAll('g[data-annotation-uid] text')].map(
      t => [...t.querySelectorAll('tspan')].map(s => s.textContent).join('\\n') || t.textContent),
  };
}"""

# The viewport's canvas: its size, how many pixels are lit and how many are in the
# warm range of the heatmap's colour map (grey radiographs and OHIF's blue UI have none).
CANVAS_PIXELS = """pane => {
  const c = pane.querySelector('canvas.cornerstone-canvas');
  const ctx = c && c.getContext('2d');
  if (!ctx || !c.width || !c.height) return null;
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  let lit = 0, warm = 0;
  for (let i = 0; i < d.length; i += 4) {
    const r = d[i], g = d[i + 1], b = d[i + 2];
    if (r + g + b > 60) lit++;
    if (r > 180 && b < 90 && r - b > 120) warm++;
  }
  return {pixels: c.width * c.height, lit, warm};
}"""

# The image ids shown in OHIF's viewports (cornerstone's wadors: ids name the SOP
# Instance UID).
IMAGE_IDS = """() => (window.cornerstone ? window.cornerstone.getEnabledElements() : [])
  .map(e => e.viewport && e.viewport.getCurrentImageId && e.viewport.getCurrentImageId())"""


@dataclass(frozen=True)
class ResultSeries:
    number: int
    description: str
    sop_instance_uids: tuple[str, ...]


@dataclass(frozen=True)
class Study:
    name: str
    study_uid: str
    sides: dict[str, float]  # assessed side -> probability (score --json)
    sr: ResultSeries
    heatmap: ResultSeries


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.fail("Debian's chromium is not installed; .ci/run installs it (apt-get)")
    return found


def ohif_build() -> Path:
    where = ohif.installed()
    if where is None:
        pytest.fail(
            f"the OHIF build {ohif.lock()['version']} is not in {ohif.cache_dir()}; "
            f"`{ohif.FETCH_COMMAND}` fetches and verifies it (.ci/run does)"
        )
    return where


def assessed_sides(names: list[str]) -> dict[str, dict[str, float]]:
    """Sample -> {side: probability} for every side the demo model assesses."""
    files = [str(SAMPLES / f"{n}.dcm") for n in names]
    report = json.loads(run_cli("score", *files, "--json", timeout=600).stdout)
    out: dict[str, dict[str, float]] = {}
    for name, image in zip(names, report, strict=True):
        assert Path(image["file"]).stem == name
        out[name] = {
            s["side"]: float(s["probability"])
            for s in image["sides"]
            if s["probability"] is not None
        }
    return out


def result_series(archive: OrthancServer, study_uid: str) -> dict[str, ResultSeries]:
    """The study's result series in Orthanc: "sr" and "heatmap" (secondary capture)."""
    found = [f for f in archive.lookup(study_uid) if f["Type"] == "Study"]
    if not found:
        return {}
    kinds: dict[str, ResultSeries] = {}
    for series in archive.get(f"/studies/{found[0]['ID']}/series"):
        tags = series["MainDicomTags"]
        description = str(tags.get("SeriesDescription", ""))
        if not description.startswith(RESULT_PREFIX) or not series["Instances"]:
            continue
        first = archive.get(f"/instances/{series['Instances'][0]}/tags?simplify")
        uids = tuple(
            str(archive.get(f"/instances/{i}/tags?simplify")["SOPInstanceUID"])
            for i in series["Instances"]
        )
        entry = ResultSeries(int(tags["SeriesNumber"]), description, uids)
        if tags.get("Modality") == "SR":
            kinds["sr"] = entry
        elif first["SOPClassUID"] == SECONDARY_CAPTURE:
            kinds["heatmap"] = entry
    return kinds


def node_config(tmp_path: Path, archive: OrthancServer, node_port: int) -> Path:
    cfg = base_config(
        tmp_path / "data",
        node_port,
        node={"ae_title": archive.node_aet, "settle_seconds": 1, "workers": 1},
        peers=[{"ae_title": archive.aet, "host": "127.0.0.1"}],
        destinations=[
            {
                "name": "orthanc",
                "ae_title": archive.aet,
                "host": "127.0.0.1",
                "port": archive.dicom_port,
            }
        ],
        deliver={"retry_base_seconds": 0.5, "retry_max_seconds": 2, "connection_timeout": 5},
        logging={"format": "json", "level": "INFO"},
    )
    return write_config(tmp_path / "node.toml", cfg)


@pytest.fixture
def studies_in_archive(tmp_path: Path) -> Iterator[tuple[OrthancServer, list[Study]]]:
    """Orthanc (DICOMweb on) holding the two sample studies with the node's results."""
    node_port = free_port()
    archive = OrthancServer(tmp_path / "orthanc", node_port, dicomweb=True).start()
    node = NodeProcess(node_config(tmp_path, archive, node_port), tmp_path / "node.log")
    try:
        node.start()
        uids = {}
        for name in STUDIES:
            data = (SAMPLES / f"{name}.dcm").read_bytes()
            archive.upload_bytes(data)  # the Lua router sends it on to the node
            uids[name] = str(pydicom.dcmread(SAMPLES / f"{name}.dcm").StudyInstanceUID)
        sides = assessed_sides(STUDIES)
        wait_for(
            lambda: all({"sr", "heatmap"} <= set(result_series(archive, uids[n])) for n in STUDIES),
            "the node's SR and heatmap in Orthanc for every study",
            600,
            node,
            archive,
        )
        studies = []
        for name in STUDIES:
            kinds = result_series(archive, uids[name])
            studies.append(Study(name, uids[name], sides[name], kinds["sr"], kinds["heatmap"]))
        yield archive, studies
    finally:
        node.kill()
        archive.stop()


@pytest.fixture
def viewer(studies_in_archive: tuple[OrthancServer, list[Study]]) -> Iterator[ViewerServer]:
    archive, _ = studies_in_archive
    with viewer_server(ohif_build(), archive.http_port) as server:
        yield server


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        playwright.selectors.set_test_id_attribute("data-cy")  # OHIF's own test ids
        launched = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def holds(label: str, probability: float) -> bool:
    """The label shows the probability as a fraction (0.62) or a percentage (62 %, 61.7),
    to the precision it prints."""
    for number in re.findall(r"\d+(?:\.\d+)?", label):
        decimals = len(number.partition(".")[2])
        tolerance = 0.5 * 10**-decimals + 1e-9
        value = float(number)
        if decimals and abs(value - probability) <= tolerance:
            return True
        if abs(value - 100 * probability) <= tolerance:
            return True
    return False


def one_label_per_side(labels: list[str], sides: dict[str, float]) -> dict[str, str] | None:
    """Side -> the label holding its probability, each label used once; None if any
    side has none."""
    free = list(labels)
    chosen: dict[str, str] = {}
    for side, probability in sorted(sides.items()):
        match = next((label for label in free if holds(label, probability)), None)
        if match is None:
            return None
        free.remove(match)
        chosen[side] = match
    return chosen


class OhifPage:
    """One study open in OHIF in a fresh browser profile, with everything that went
    wrong on the page recorded."""

    def __init__(self, browser: Any, viewer: ViewerServer, shots: Path, study: Study) -> None:
        self.viewer = viewer
        self.shots = shots
        self.study = study
        self.context = browser.new_context(viewport={"width": 1600, "height": 1000})
        self.errors: list[str] = []
        self.nudges = 0
        self.elsewhere: list[str] = []
        origin = viewer.url + "/"
        self.context.route(
            "**/*",
            lambda route: (
                route.continue_()
                if route.request.url.startswith(origin)
                else (self.elsewhere.append(route.request.url), route.abort())
            ),
        )
        self.context.add_init_script(WATCH_ERRORS)
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        self.page.on(
            "console",
            lambda msg: (
                self.errors.append(f"console error: {msg.text}") if msg.type == "error" else None
            ),
        )

    def close(self) -> None:
        self.context.close()

    def shot(self, what: str) -> Path:
        path = self.shots / f"{self.study.name}-{what}.png"
        self.page.screenshot(path=str(path))
        print(f"screenshot: {path}", file=sys.stderr)
        return path

    def problems(self) -> list[str]:
        on_page = self.page.evaluate("() => window.__triageErrors || []")
        return self.errors + list(on_page)

    def context_for(self, tag: str) -> str:
        """What a failure message needs: a screenshot, errors, failed requests."""
        path = self.shot(f"FAILED-{tag}")
        return (
            f"screenshot {path}\nerrors: {self.problems()}\n{self.error_details()}"
            f"requests Orthanc refused: {self.viewer.failures[-10:]}\n"
            f"requests to other hosts (blocked): {self.elsewhere[:10]}"
        )

    def error_details(self) -> str:
        """The exception behind an error toast, from its "Show Details" dialog."""
        toast = self.page.locator('[data-sonner-toast][data-type="error"]')
        if not toast.count():
            return ""
        try:
            toast.first.get_by_role("button", name="Show Details").click(timeout=5000)
            dialog = self.page.get_by_role("dialog").first
            return "details: " + dialog.inner_text(timeout=5000)[:800] + "\n"
        except PlaywrightError as exc:
            return f"(no details: {exc.message.splitlines()[0]})\n"

    def poll(self, check: Any, what: str, tag: str, timeout: float = LOAD_SECONDS) -> Any:
        """``check()`` until truthy (returned), bounded; fails at once if the page shows
        an error, and says what was seen (screenshot ``FAILED-<tag>``).

        OHIF 3.13 sometimes adds an SR's annotations after its last render of the
        viewport and draws them only at the next one (seen in about one load in six
        here): whenever NUDGE_SECONDS pass with nothing to show, the window is
        resized by a pixel, as a user would, which makes OHIF render again. Content
        OHIF cannot draw stays undrawn however often it renders.
        """
        deadline = time.monotonic() + timeout
        nudge_at = time.monotonic() + NUDGE_SECONDS
        while True:
            value = check()
            if value:
                return value
            if self.problems():
                raise AssertionError(
                    f"OHIF showed errors waiting for {what}\n{self.context_for(tag)}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"OHIF: timed out waiting for {what}\n{self.context_for(tag)}")
            if time.monotonic() > nudge_at:
                self.nudges += 1
                self.page.set_viewport_size({"width": 1600, "height": 1000 - self.nudges % 2})
                print(f"{self.study.name}: resized the window waiting for {what}", file=sys.stderr)
                nudge_at = time.monotonic() + NUDGE_SECONDS
            self.page.wait_for_timeout(250)  # lets the page's events run between checks

    def open_study(self) -> None:
        self.page.goto(f"{self.viewer.url}/viewer?StudyInstanceUIDs={self.study.study_uid}")
        # A new profile gets OHIF's first-run tour over the viewer: dismiss it.
        skip = self.page.get_by_role("button", name="Skip all")
        self.poll(lambda: skip.is_visible(), "OHIF's first-run tour to offer 'Skip all'", "tour")
        skip.click()
        self.poll(lambda: not skip.is_visible(), "the tour to close", "tour")

    def thumbnail(self, series: ResultSeries) -> Any:
        """The study browser's entry for ``series`` (by series number), once listed."""
        entry = self.page.locator(
            f'[data-cy^="study-browser-thumbnail"][data-series="{series.number}"]'
        )
        label = entry.get_by_test_id("series-description-label")
        self.poll(
            lambda: entry.count() == 1 and label.inner_text().strip() == series.description,
            f"series {series.number} ({series.description!r}) in the study browser",
            f"series-{series.number}",
        )
        return entry

    def pane(self) -> Any:
        return self.page.get_by_test_id("viewport-pane").first

    def sr_drawing(self) -> dict[str, Any] | None:
        """Polylines and labels drawn once every assessed side has its label."""
        drawn = self.pane().evaluate(SR_DRAWING)
        if drawn and one_label_per_side(drawn["labels"], self.study.sides) is not None:
            return dict(drawn)
        return None

    def heatmap_rendered(self) -> dict[str, Any] | None:
        pane = self.pane()
        overlay = pane.get_by_test_id("viewport-overlay-top-left")
        if self.study.heatmap.description not in (overlay.inner_text() if overlay.count() else ""):
            return None
        ids = [str(i) for i in self.page.evaluate(IMAGE_IDS) if i]
        if not any(uid in i for i in ids for uid in self.study.heatmap.sop_instance_uids):
            return None
        pixels = pane.evaluate(CANVAS_PIXELS)
        # Rendered: most of the viewport lit, and the colour map's warm colours present.
        if pixels and pixels["lit"] > 0.2 * pixels["pixels"] and pixels["warm"] > 500:
            return dict(pixels)
        return None


def test_a_label_holds_a_probability_at_the_precision_it_prints() -> None:
    ohif_today = "Probability of osteoporosis: 0.62 1\n363698007: Proximal Femur"
    assert holds(ohif_today, 0.6174) and not holds(ohif_today, 0.5185)  # "1" is no 0.52
    assert holds("Left hip: 62 % (DXA recommended)", 0.6174)
    assert holds("p = 61.7%", 0.6174) and not holds("p = 61.7%", 0.6125)
    assert not holds("Proximal Femur", 0.6174)
    both = {"left": 0.5185, "right": 0.6174}
    labels = ["Right: 0.62", "Left: 0.52"]
    assert one_label_per_side(labels, both) == {"left": "Left: 0.52", "right": "Right: 0.62"}
    assert one_label_per_side(["Right: 0.62"], both) is None  # a side without its label
    assert one_label_per_side(["0.52", "0.52"], {"left": 0.52, "right": 0.521}) is not None
    assert one_label_per_side(["0.52"], {"left": 0.52, "right": 0.521}) is None  # used once


@pytest.mark.timeout(1200)
def test_ohif_lists_opens_and_draws_the_nodes_results(
    studies_in_archive: tuple[OrthancServer, list[Study]],
    viewer: ViewerServer,
    browser: Any,
    tmp_path: Path,
) -> None:
    _, studies = studies_in_archive
    # The two cases the test is for: every side assessed, and one side not assessable.
    assert [len(s.sides) for s in studies] == [2, 1], [s.sides for s in studies]
    shots = tmp_path / "screenshots"
    shots.mkdir()
    print(f"OHIF {ohif.lock()['version']} at {viewer.url}; screenshots in {shots}", file=sys.stderr)

    for study in studies:
        ohif_page = OhifPage(browser, viewer, shots, study)
        try:
            ohif_page.open_study()
            # Both result series are listed, under their "AI triage" descriptions.
            sr_entry = ohif_page.thumbnail(study.sr)
            heatmap_entry = ohif_page.thumbnail(study.heatmap)
            ohif_page.shot("study")

            # The SR opens on the radiograph: one ROI polyline per assessed side, each
            # side's probability in a label.
            sr_entry.dblclick()
            drawn = ohif_page.poll(
                ohif_page.sr_drawing,
                f"the SR's ROIs with labels holding {study.sides} on the radiograph",
                "sr",
            )
            ohif_page.shot("sr")
            print(f"{study.name}: SR labels {drawn['labels']}", file=sys.stderr)
            assert drawn["polylines"] == len(study.sides), (
                f"{study.name}: {drawn['polylines']} polylines for assessed sides "
                f"{sorted(study.sides)}\n{ohif_page.context_for('polylines')}"
            )
            assert ohif_page.problems() == [], (
                f"{study.name}: the SR opened with errors\n{ohif_page.context_for('sr-errors')}"
            )

            # The heatmap opens and renders in colour.
            heatmap_entry.dblclick()
            ohif_page.poll(
                ohif_page.heatmap_rendered, "the heatmap rendered in the viewport", "heatmap"
            )
            ohif_page.shot("heatmap")
            assert ohif_page.problems() == [], (
                f"{study.name}: errors after opening the heatmap\n"
                f"{ohif_page.context_for('heatmap-errors')}"
            )
        finally:
            ohif_page.close()
