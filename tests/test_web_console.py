"""The web console in a real browser: Debian's chromium, headless, driven by Playwright.

One real ``triage-node serve`` (demo model) with the console on its own loopback
port and two users (an admin and a viewer), delivering to dcmtk's storescp,
processes the synthetic samples sent with dcmtk's dcmsend. Then, in chromium:
every page loads with no console error and passes axe-core (no serious or
critical violation, at 1280 px and at phone width); the worklist filters, and
shows a newly arrived instance without a reload; the study page shows the
heatmap and the SR's per-side values; resend works for a logged-in admin and is
refused (403) to everyone else; no page or API answer holds a sample's patient
name, ID or birth date. And a console other hosts could reach without HTTPS and
login is refused at start (exit 2, naming the key and the file).

Screenshots of the four pages (1280 px wide) are written under the test's
temporary directory, or to ``$TRIAGE_NODE_CONSOLE_SHOTS`` when set (how the ones
in docs/ are made). .ci/run installs chromium (apt), Playwright (the [test] extra;
``playwright install`` is never run) and axe-core (``python3 -m tests.web.axe``).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import ssl
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests.peers import (
    REPO,
    NodeProcess,
    base_config,
    free_port,
    need_tool,
    node_running,
    run_cli,
    storescu,
    wait_for,
    write_config,
)
from tests.test_phi import phi_strings, sample_files
from tests.test_results import storescp
from tests.test_tls import Pki, pki  # noqa: F401  (the fixture)
from tests.web import axe
from triage_node.web.auth import hash_password

CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ADMIN, VIEWER = ("ada", "admin-secret-1"), ("vic", "viewer-secret-2")
#: Held back from the first batch: it arrives while the worklist page is open.
LATE_SAMPLE = "02_normal_mono1"
#: Both hips assessed, DXA recommended: the study page checked in detail.
DETAIL_SAMPLE = "01_osteoporotic_jpegls"
PAGES = {"worklist": "/worklist", "status": "/status", "trends": "/trends"}
SERIOUS = ("serious", "critical")


@dataclass
class Console:
    url: str
    node: NodeProcess
    config: Path
    files: list[Path]
    phi: set[str]
    study_of: dict[str, str]  # sample name -> Study Instance UID
    sop_of: dict[str, str]  # sample name -> SOP Instance UID
    scanners: set[str]  # "Manufacturer Model Name" of the first batch
    shots: Path


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.fail("Debian's chromium is not installed; .ci/run installs it (apt-get)")
    return found


def axe_script() -> str:
    script = axe.installed()
    if script is None:
        pytest.fail(
            f"axe-core {axe.lock()['version']} is not in {axe.cache_dir()}; "
            f"`{axe.FETCH_COMMAND}` fetches and verifies it (.ci/run does)"
        )
    return script.read_text()


def worklist_json(config: Path) -> list[dict[str, Any]]:
    return json.loads(run_cli("worklist", "--json", "--limit", "100", config=config).stdout)


def settled(rows: list[dict[str, Any]], sops: set[str]) -> bool:
    """Every instance of ``sops`` is in the worklist and done: skipped, or reported and
    delivered."""
    by_sop = {r["sop_instance_uid"]: r for r in rows}
    if not sops <= by_sop.keys():
        return False
    return all(
        by_sop[s]["state"] == "skipped" or by_sop[s]["delivery_state"] == "delivered" for s in sops
    )


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    tmp = tmp_path_factory.mktemp("console")
    files = sample_files(tmp)
    headers = {f.stem: pydicom.dcmread(f, stop_before_pixels=True) for f in files}
    web_port, archive_port = free_port(), free_port()
    config = write_config(
        tmp / "node.toml",
        base_config(
            tmp / "data",
            free_port(),
            node={"settle_seconds": 1, "workers": 1},
            destinations=[
                {
                    "name": "archive",
                    "ae_title": "ARCHIVE",
                    "host": "127.0.0.1",
                    "port": archive_port,
                }
            ],
            web={
                "host": "127.0.0.1",
                "port": web_port,
                "poll_seconds": 0.5,
                "users": [
                    {"name": ADMIN[0], "password_hash": hash_password(ADMIN[1]), "role": "admin"},
                    {"name": VIEWER[0], "password_hash": hash_password(VIEWER[1])},
                ],
            },
            receive={"min_free_disk_mb": 0, "fsync": False},
        ),
    )
    shots = Path(os.environ.get("TRIAGE_NODE_CONSOLE_SHOTS") or tmp / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    with storescp(tmp / "archive", archive_port):
        node = NodeProcess(config, tmp / "node.log").start()
        try:
            url = f"http://127.0.0.1:{web_port}"
            wait_for(lambda: _answers(url + "/login"), "the console answering", 60, node)
            first = [f for f in files if f.stem != LATE_SAMPLE]
            # dcmsend proposes each file's own transfer syntax (JPEG-LS, RLE, JPEG 2000 ...)
            subprocess.run(
                [
                    need_tool("dcmsend"),
                    "-aet",
                    "STORESCU",
                    "-aec",
                    "TRIAGE",
                    "--decompress-never",
                    "127.0.0.1",
                    str(node.port),
                    *map(str, first),
                ],
                check=True,
                capture_output=True,
                timeout=120,
            )
            sops = {str(headers[f.stem].SOPInstanceUID) for f in first}
            wait_for(
                lambda: settled(worklist_json(config), sops), "the samples processed", 600, node
            )
            yield Console(
                url,
                node,
                config,
                files,
                phi_strings(files),
                {name: str(ds.StudyInstanceUID) for name, ds in headers.items()},
                {name: str(ds.SOPInstanceUID) for name, ds in headers.items()},
                {
                    f"{headers[f.stem].get('Manufacturer', '')} "
                    f"{headers[f.stem].get('ManufacturerModelName', '')}".strip()
                    or "unknown scanner"  # the test's own marked radiograph names none
                    for f in first
                },
                shots,
            )
        finally:
            node.kill()


def _answers(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as resp:
            return resp.status == 200
    except (OSError, http.client.HTTPException):
        return False


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


class Watched:
    """A page with its console errors and uncaught exceptions recorded."""

    def __init__(self, context: BrowserContext) -> None:
        self.page: Page = context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))


def logged_in(browser: Browser, console: Console, user: tuple[str, str], **options: Any) -> Watched:
    context = browser.new_context(**options)
    watched = Watched(context)
    page = watched.page
    page.goto(console.url + "/worklist")
    assert page.url.startswith(console.url + "/login")  # users configured: log in first
    page.get_by_label("User name").fill(user[0])
    page.get_by_label("Password").fill(user[1])
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(console.url + "/worklist")
    return watched


def fetch(page: Page, path: str, form: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``fetch()`` from inside the page, as its own script would (same origin, its
    cookies): status, content type and body text. With ``form``: a POST of it."""
    answer: dict[str, Any] = page.evaluate(
        """async ([path, form]) => {
             const options = {credentials: 'same-origin', redirect: 'manual'};
             if (form) { options.method = 'POST'; options.body = new URLSearchParams(form); }
             const r = await fetch(path, options);
             const type = r.headers.get('Content-Type') || '';
             const text = type.startsWith('image/') ? '' : await r.text();
             return {status: r.status, type, text};
           }""",
        [path, form],
    )
    return int(answer["status"]), str(answer["type"]), str(answer["text"])


def axe_violations(page: Page, script: str) -> list[dict[str, Any]]:
    page.evaluate(script)  # evaluated by the browser itself: the page's CSP stays in force
    result: list[dict[str, Any]] = page.evaluate(
        """async () => (await axe.run(document, {resultTypes: ['violations']})).violations
             .map(v => ({id: v.id, impact: v.impact, help: v.help,
                         nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)}))"""
    )
    return result


def test_every_page_loads_without_error_and_passes_axe(browser: Browser, console: Console) -> None:
    script = axe_script()
    study = f"/study/{console.study_of[DETAIL_SAMPLE]}"
    for width, height, suffix in ((1280, 900, ""), (390, 844, "-phone")):
        watched = logged_in(browser, console, VIEWER, viewport={"width": width, "height": height})
        page = watched.page
        for name, path in {**PAGES, "study": study}.items():
            response = page.goto(console.url + path)
            assert response is not None and response.status == 200, path
            page.wait_for_load_state("networkidle")
            assert page.locator("h1").first.is_visible()
            serious = [v for v in axe_violations(page, script) if v["impact"] in SERIOUS]
            assert not serious, f"{path} at {width} px: {serious}"
            page.screenshot(path=str(console.shots / f"console-{name}{suffix}.png"), full_page=True)
        # the study page's heatmap really is an image the browser decoded
        page.goto(console.url + study)
        assert page.locator("figure.heatmap img").first.evaluate(
            "img => img.complete && img.naturalWidth > 0"
        )
        assert not watched.errors, watched.errors
        watched.page.context.close()


def test_keyboard_reaches_the_filters_and_the_study_links(
    browser: Browser, console: Console
) -> None:
    watched = logged_in(browser, console, VIEWER)
    page = watched.page
    reached: list[str] = []
    for _ in range(40):
        page.keyboard.press("Tab")
        reached.append(
            page.evaluate(
                "() => { const e = document.activeElement;"
                " return (e.id || e.getAttribute('href') || e.textContent || '').trim(); }"
            )
        )
    assert "f-state" in reached and "f-uid" in reached and "Apply" in reached
    assert any(r.startswith("/study/") for r in reached)
    watched.page.context.close()


def test_worklist_filters_and_shows_a_new_instance_without_reload(
    browser: Browser, console: Console
) -> None:
    watched = logged_in(browser, console, VIEWER)
    page = watched.page
    rows = page.locator("#worklist-rows tr")
    # state filter: the chest radiograph is the one skipped instance
    page.get_by_label("State").select_option("skipped")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url("**state=skipped**")
    assert rows.count() == 1
    assert "CHEST" in rows.first.inner_text()
    # modality: the two CR samples (RLE and JPEG 2000), nothing else
    page.goto(console.url + "/worklist")
    page.get_by_label("Modality").select_option("CR")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url("**modality=CR**")
    modalities = [t.split()[0] for t in rows.locator("td:nth-child(4)").all_inner_texts()]
    assert modalities and set(modalities) == {"CR"}
    # UID search: one study's tail finds that study's instance only
    study = console.study_of[DETAIL_SAMPLE]
    page.goto(console.url + "/worklist")
    page.get_by_label("UID contains").fill(study[-10:])
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url("**uid=**")
    assert rows.count() == 1
    assert rows.first.locator(f'a[href="/study/{study}"]').count() == 1
    # live: the held-back sample arrives while the unfiltered page is open
    page.goto(console.url + "/worklist")
    before = rows.count()
    page.evaluate("() => { window.__notReloaded = true; }")
    late = console.sop_of[LATE_SAMPLE]
    assert late[-13:] not in page.locator("#worklist-rows").inner_text()
    sent = storescu(console.node.port, REPO / "samples" / f"{LATE_SAMPLE}.dcm")
    assert sent.returncode == 0, sent.stderr
    page.locator("#worklist-rows").get_by_text(late[-13:]).wait_for(timeout=60_000)
    assert page.evaluate("() => window.__notReloaded === true")  # the same document
    assert rows.count() == before + 1
    # and it follows the instance to its result, still without a reload
    row = page.locator("#worklist-rows tr", has_text=late[-13:])
    row.locator(".decision").wait_for(timeout=300_000)
    assert page.evaluate("() => window.__notReloaded === true")
    assert not watched.errors, watched.errors
    watched.page.context.close()


def sr_side_values(archive_sr: pydicom.Dataset) -> list[str]:
    """The NumericValue of every per-side probability in the SR's content tree."""
    found: list[str] = []

    def walk(items: Any) -> None:
        for item in items or []:
            if item.get("ValueType") == "NUM" and item.get("MeasuredValueSequence"):
                found.append(str(item.MeasuredValueSequence[0].NumericValue))
            walk(item.get("ContentSequence"))

    walk(archive_sr.get("ContentSequence"))
    return found


def test_study_page_shows_the_heatmap_and_the_srs_per_side_values(
    browser: Browser, console: Console
) -> None:
    uid = console.study_of[DETAIL_SAMPLE]
    archive = console.node.data_dir.parent / "archive"
    reports = [
        ds
        for ds in (pydicom.dcmread(f) for f in archive.iterdir() if f.name.startswith("SR"))
        if ds.StudyInstanceUID == uid
    ]
    assert reports, "the archive got no SR for the study"
    values = sr_side_values(reports[0])
    assert len(values) == 2  # both hips assessed
    watched = logged_in(browser, console, VIEWER)
    page = watched.page
    page.goto(console.url + f"/study/{uid}")
    sr_text = page.locator(".sr-tree").inner_text()
    for value in values:
        assert value in sr_text
    for side in ("Right hip", "Left hip"):
        assert side in sr_text
    image = page.locator("figure.heatmap img")
    assert image.count() == 1
    status, kind, _ = fetch(page, str(image.get_attribute("src")))
    assert (status, kind) == (200, "image/jpeg")
    assert image.evaluate("img => img.complete && img.naturalWidth >= 320")
    # the decision and each side's probability from the database agree with the SR
    table = page.locator("section[aria-labelledby=h-sources] table").inner_text()
    assert "DXA recommended" in table
    for value in values:
        assert f"{float(value) / 100:.2f}" in table
    assert "archive" in page.locator("section[aria-labelledby=h-delivery]").inner_text()
    timeline = page.locator("ol.timeline").inner_text()
    assert "study delivered" in timeline and "received" in timeline
    assert not watched.errors, watched.errors
    watched.page.context.close()


def study_json(page: Page, uid: str) -> dict[str, Any]:
    status, _, text = fetch(page, f"/api/study/{uid}")
    assert status == 200
    detail: dict[str, Any] = json.loads(text)
    return detail


def test_trends_count_the_samples_by_hour_and_by_scanner(
    browser: Browser, console: Console
) -> None:
    watched = logged_in(browser, console, VIEWER)
    page = watched.page
    page.goto(console.url + "/trends")
    hours = json.loads(fetch(page, "/api/trends")[2])["hours"]
    received = sum(h["arrivals"] for h in hours)
    assert received >= len(console.files) - 1  # the first batch (and the late one, if run)
    assert f"{received} instances received" in page.locator("p.lead").inner_text()
    assert page.locator("svg.chart").count() >= 2
    # one row per scanner the samples name, with its positive rate
    table = page.locator("#scanners table")
    names = [n.strip() for n in table.locator("tbody th").all_inner_texts()]
    assert console.scanners <= set(names), (console.scanners, names)
    assert table.locator("svg.chart").count() == len(names)
    assert "%" in table.locator("td.rate").first.inner_text()
    assert not watched.errors, watched.errors
    watched.page.context.close()


def sent_objects(page: Page, uid: str) -> int:
    detail = study_json(page, uid)
    return sum(1 for ev in detail["events"] if ev["kind"] == "object_sent")


def test_resend_is_an_admins_and_refused_to_anyone_else(browser: Browser, console: Console) -> None:
    uid = console.study_of[DETAIL_SAMPLE]
    action = f"/study/{uid}/resend"
    # nobody logged in
    anonymous = browser.new_context()
    page = anonymous.new_page()
    page.goto(console.url + "/login")
    assert fetch(page, action, {"csrf": "x"})[0] == 403
    anonymous.close()
    # a viewer, with the CSRF token of its own session
    viewer = logged_in(browser, console, VIEWER)
    viewer.page.goto(console.url + f"/study/{uid}")
    assert viewer.page.get_by_role("button", name="Resend results").count() == 0
    assert "administrator" in viewer.page.locator(".resend").inner_text()
    token = viewer.page.evaluate(
        "() => document.querySelector('input[name=csrf]').value"
    )  # the logout form's
    assert fetch(viewer.page, action, {"csrf": token})[0] == 403
    viewer.page.context.close()
    # an admin: without the CSRF token, then with another session's, refused
    admin = logged_in(browser, console, ADMIN)
    page = admin.page
    assert fetch(page, action, {})[0] == 403
    assert fetch(page, action, {"csrf": token})[0] == 403
    admin.errors.clear()  # the two refusals above, logged by the browser as it should
    before = sent_objects(page, uid)
    page.goto(console.url + f"/study/{uid}")
    page.get_by_role("button", name="Resend results").click()
    flash = page.locator(".flash")
    flash.wait_for()
    assert "requeued job" in flash.inner_text()
    # every object of the study's report goes to the archive again
    objects = study_json(page, uid)["deliveries"][0]["objects"]
    wait_for(
        lambda: sent_objects(page, uid) >= before + objects,
        "the resent objects delivered",
        120,
        console.node,
    )
    assert not admin.errors, admin.errors
    page.context.close()


def responses_to_check(console: Console, page: Page) -> dict[str, str]:
    bodies: dict[str, str] = {}
    paths = ["/worklist", "/worklist?fragment=rows", "/api/worklist", "/status", "/api/status"]
    paths += ["/trends", "/api/trends", "/trends?hours=168", "/login", "/no-such-page"]
    for uid in sorted(set(console.study_of.values())):
        paths += [f"/study/{uid}", f"/api/study/{uid}"]
    for path in paths:
        status, _, text = fetch(page, path)
        assert status in (200, 404), path
        bodies[path] = text
    return bodies


def test_no_page_or_api_answer_holds_patient_data(browser: Browser, console: Console) -> None:
    admin = logged_in(browser, console, ADMIN)
    bodies = responses_to_check(console, admin.page)
    studies = [p for p in bodies if p.startswith("/study/")]
    assert len(studies) >= 8  # every sample's study has its page
    assert all("Images and decisions" in bodies[p] for p in studies)
    leaks = {
        path: sorted(s for s in console.phi if s.lower() in body.lower())
        for path, body in bodies.items()
    }
    assert not any(leaks.values()), {p: s for p, s in leaks.items() if s}
    admin.page.context.close()


@pytest.mark.parametrize(
    ("sections", "key"),
    [
        ({"web": {"host": "0.0.0.0", "port": 0}}, "web.host"),
        ({"metrics": {"host": "0.0.0.0"}, "web": {"enabled": True}}, "metrics.host"),
    ],
)
def test_a_console_reachable_from_other_hosts_without_https_and_login_is_refused(
    tmp_path: Path, sections: dict[str, Any], key: str
) -> None:
    config = write_config(
        tmp_path / "open.toml", base_config(tmp_path / "data", free_port(), **sections)
    )
    done = run_cli("serve", config=config, check=False, timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"key '{key}'" in done.stderr and str(config) in done.stderr
    assert not (tmp_path / "data").exists()  # refused before anything started


def test_a_remote_console_with_https_and_users_serves_https_only(
    tmp_path: Path,
    pki: Pki,  # noqa: F811 (the fixture imported above)
) -> None:
    port = free_port()
    web = {
        "host": "0.0.0.0",
        "port": port,
        "certificate": str(pki.server.cert),
        "private_key": str(pki.server.key),
        "users": [{"name": ADMIN[0], "password_hash": hash_password(ADMIN[1]), "role": "admin"}],
    }
    trusted = ssl.create_default_context(cafile=str(pki.ca))
    with node_running(tmp_path, command="receive", web=web) as node:
        url = f"https://127.0.0.1:{port}"
        wait_for(lambda: _answers(url + "/login", trusted), "the console over HTTPS", 60, node)
        # the worklist wants a login; the login sets a Secure cookie
        with urllib.request.urlopen(url + "/worklist", context=trusted) as resp:
            assert resp.url.startswith(url + "/login")
        form = urllib.parse.urlencode({"user": ADMIN[0], "password": ADMIN[1]}).encode()

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: Any, **kwargs: Any) -> None:
                return None

        opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=trusted), NoRedirect
        )
        with pytest.raises(urllib.error.HTTPError) as redirect:
            opener.open(urllib.request.Request(url + "/login", data=form, method="POST"))
        assert redirect.value.code == 303
        cookie = redirect.value.headers["Set-Cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        # plain HTTP on the same port gets no page
        assert not _answers(f"http://127.0.0.1:{port}/login")


def test_metrics_opened_to_other_hosts_leave_the_console_off_and_say_so(tmp_path: Path) -> None:
    """A site that opens /metrics to its Prometheus server keeps running; the console stays off."""
    metrics_port = free_port()
    with node_running(tmp_path, metrics={"host": "0.0.0.0", "port": metrics_port}) as node:
        wait_for(lambda: "web console off" in node.log_text(), "the console-off warning")
        assert "web.port" in node.log_text()
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            assert b"triage_" in r.read()  # the metrics endpoint serves
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/", timeout=10)
        assert refused.value.code == 404  # and no console page
