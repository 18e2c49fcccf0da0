"""The dashboard as users run it: `minique -A testapp dashboard` against real workers.

The JSON API and the security rules are tested over HTTP; the pages in a real headless
Chromium driven by Playwright (skipped only when no Chromium is installed). With
MINIQUE_DOCS_SCREENSHOTS=1 the browser test also refreshes docs/img/*.png.
"""
import base64
import json
import os
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from procs import APPS, Proc, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DOCS_IMG = Path(__file__).resolve().parent.parent / "docs" / "img"
AUTH = ("admin", "s3cret")


class Dash:
    """A running dashboard subprocess and an HTTP client for it."""

    def __init__(self, proc: Proc, url: str, auth=None, token=None):
        self.proc = proc
        self.url = url.rstrip("/")
        self.auth = auth
        self.token = token
        self._csrf = None

    def request(self, method, path, body=None, headers=None, auth=True):
        req = urllib.request.Request(self.url + path, method=method,
                                     data=None if body is None else json.dumps(body).encode())
        if body is not None:
            req.add_header("Content-Type", "application/json")
        if auth and self.auth:
            req.add_header("Authorization", "Basic " + base64.b64encode(":".join(self.auth).encode()).decode())
        elif auth and self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.headers, err.read()

    def get(self, path, **kw):
        status, _, data = self.request("GET", path, **kw)
        assert status == 200, (status, data)
        return json.loads(data)

    @property
    def csrf(self):
        if self._csrf is None:
            self._csrf = self.get("/api/session")["csrf"]
        return self._csrf

    def post(self, path, body=None, csrf=True):
        status, _, data = self.request("POST", path, body if body is not None else {},
                                       headers={"X-CSRF-Token": self.csrf} if csrf else None)
        return status, json.loads(data or b"null")

    def metrics(self):
        status, _, data = self.request("GET", "/metrics")
        assert status == 200
        out = {}
        for family in text_string_to_metric_families(data.decode()):
            for s in family.samples:
                out[(s.name, frozenset(s.labels.items()))] = s.value
        return out


def start_dashboard(procs, *args, auth=None, token=None) -> Dash:
    procs.count += 1
    argv = ["-A", "testapp", "dashboard", "--port", "0", "--refresh", "0.3", "--sample-interval", "0.3",
            "--rescan-interval", "0.5", *args]
    if auth:
        argv += ["--basic-auth", ":".join(auth)]
    if token:
        argv += ["--token", token]
    proc = Proc(argv, procs.env(), APPS, procs.tmp_path / f"dashboard{procs.count}.log")
    procs.procs.append(proc)

    def listening():
        if proc.popen.poll() is not None:
            raise AssertionError(f"dashboard exited with {proc.popen.returncode}:\n{proc.log()}")
        return re.search(r"dashboard listening on (http://\S+)", proc.log())
    url = wait_for(listening, 20, "the dashboard to listen").group(1)
    return Dash(proc, url, auth=auth, token=token)


# --- HTTP: security ------------------------------------------------------------------------------------
def test_auth_is_required_and_posts_need_the_csrf_token(procs, client_app):
    dash = start_dashboard(procs, auth=AUTH, token="t0ken")
    assert dash.url.startswith("http://127.0.0.1:")  # loopback unless told otherwise
    status, headers, _ = dash.request("GET", "/api/workers", auth=False)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    for path in ("/", "/static/app.js", "/metrics", "/api/tasks"):
        assert dash.request("GET", path, auth=False)[0] == 401, path
    wrong = "Basic " + base64.b64encode(b"admin:nope").decode()
    assert dash.request("GET", "/api/workers", auth=False, headers={"Authorization": wrong})[0] == 401
    assert dash.request("GET", "/api/workers")[0] == 200
    assert dash.request("GET", "/api/workers", auth=False, headers={"Authorization": "Bearer t0ken"})[0] == 200
    assert dash.request("GET", "/api/workers", auth=False, headers={"Authorization": "Bearer nope"})[0] == 401
    # ?token= once sets a cookie the browser then sends
    status, headers, _ = dash.request("GET", "/?token=t0ken", auth=False)
    assert status == 200 and "minique_token=t0ken" in headers["Set-Cookie"] and "HttpOnly" in headers["Set-Cookie"]
    assert dash.request("GET", "/api/workers", auth=False, headers={"Cookie": "minique_token=t0ken"})[0] == 200
    assert dash.request("GET", "/healthz", auth=False)[0] == 200
    # bound to loopback: other Host names (DNS rebinding) are refused
    assert dash.request("GET", "/healthz", auth=False, headers={"Host": "evil.example:80"})[0] == 421
    assert dash.request("GET", "/api/workers", headers={"Host": f"localhost:{dash.url.rsplit(':', 1)[1]}"})[0] == 200
    # pages come with a strict CSP and never from a CDN
    status, headers, page = dash.request("GET", "/")
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert b"http://" not in page and b"https://" not in page
    # state changes: POST only, with the CSRF token, from our own origin
    task = "/api/tasks/00000000-0000-0000-0000-000000000000/retry"
    assert dash.post(task, csrf=False)[0] == 403
    assert dash.request("POST", task, {}, headers={"X-CSRF-Token": "forged"})[0] == 403
    assert dash.request("POST", task, {}, headers={"X-CSRF-Token": dash.csrf,
                                                   "Origin": "http://evil.example"})[0] == 403
    assert dash.request("POST", task, {}, auth=False, headers={"X-CSRF-Token": dash.csrf})[0] == 401
    assert dash.post(task)[0] == 404  # allowed through: the task is unknown
    assert dash.request("GET", task)[0] == 404  # a GET never acts


# --- HTTP: the JSON API -------------------------------------------------------------------------------
def test_api_tasks_canvas_links_retry_and_dead_letter_replay(procs, client_app, redis_client):
    from minique import chain
    worker = procs.worker("-c", "2")
    dash = start_dashboard(procs)
    app = client_app.app
    c = chain(client_app.add.s(1, 1), client_app.add.s(10)).apply_async()
    assert c.get(timeout=10) == 12
    first, second = c.parent.id, c.id

    def state_of(tid):
        tasks = dash.get("/api/tasks?limit=1000")["tasks"]
        return next((t["state"] for t in tasks if t["id"] == tid), None)
    wait_for(lambda: state_of(first) == "SUCCESS" and state_of(second) == "SUCCESS", 10, "the chain in the index")
    detail = dash.get(f"/api/tasks/{first}")
    assert [k["id"] for k in detail["children"]] == [second]
    assert detail["result"] == 2 and detail["worker"] == worker.hostname and detail["args"] == "[1, 1]"
    assert detail["runtime"] >= 0 and detail["queue_wait"] >= 0
    detail = dash.get(f"/api/tasks/{second}")
    assert detail["parent"]["id"] == first and detail["root"]["id"] == first and detail["result"] == 12
    assert [h["type"] for h in detail["history"]] == ["task-received", "task-started", "task-succeeded"]
    filtered = dash.get(f"/api/tasks?state=SUCCESS&name=testapp.add&worker={worker.hostname}")
    assert {t["id"] for t in filtered["tasks"]} == {first, second}
    assert dash.get("/api/tasks?state=FAILURE")["tasks"] == []

    # a failed task, re-sent from the dashboard, succeeds
    failed = client_app.fail_first.delay("ff-api")
    with pytest.raises(RuntimeError):
        failed.get(timeout=10)
    wait_for(lambda: any(t["id"] == failed.id and t["retryable"] for t in dash.get("/api/failed")["tasks"]), 10,
             "the failure in the index")
    assert "RuntimeError" in dash.get(f"/api/tasks/{failed.id}")["traceback"]
    status, answer = dash.post(f"/api/tasks/{failed.id}/retry")
    assert status == 200, answer
    assert app.AsyncResult(answer["id"]).get(timeout=10) == 2
    wait_for(lambda: dash.get(f"/api/tasks/{answer['id']}")["state"] == "SUCCESS", 10, "the retry's success")
    assert dash.get(f"/api/tasks/{answer['id']}")["retry_of_task"]["id"] == failed.id
    assert dash.get(f"/api/tasks/{failed.id}")["retried_as_task"]["id"] == answer["id"]
    assert dash.post(f"/api/tasks/{second}/retry")[0] == 409  # only failures are retried

    # a dead letter, replayed
    msg = app.build_message("testapp.add", (20, 22))
    app.broker.dead_letter(redis_client, msg.encode(), "test reason", "default", msg.id, "someone")
    [dead] = dash.get("/api/dlq")["dead_letters"]
    assert (dead["name"], dead["task_id"], dead["reason"]) == ("testapp.add", msg.id, "test reason")
    status, _ = dash.post(f"/api/dlq/{dead['entry']}/replay")
    assert status == 200
    assert app.AsyncResult(msg.id).get(timeout=10) == 42
    assert dash.get("/api/dlq")["dead_letters"] == []
    assert dash.post(f"/api/dlq/{dead['entry']}/replay")[0] == 404

    workers = dash.get("/api/workers")["workers"]
    assert [(w["hostname"], w["status"], w["concurrency"]) for w in workers] == [(worker.hostname, "online", 2)]
    queues = dash.get("/api/queues")
    assert "default" in queues["now"]["queues"]
    wait_for(lambda: len(dash.get("/api/queues")["history"]) >= 2, 10, "queue samples")


# --- the pages, in a real browser ----------------------------------------------------------------------
needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                    reason=f"no Chromium at {CHROMIUM} (apt-get install chromium; CI installs it)")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run"]


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            yield b
        finally:
            b.close()


def shot(page, name, tmp_path):
    page.evaluate("document.getElementById('toast').hidden = true")
    page.screenshot(path=str(tmp_path / name), full_page=True)
    if os.environ.get("MINIQUE_DOCS_SCREENSHOTS"):
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS_IMG / name), full_page=True)


@needs_chromium
def test_browser_pages_live_updates_and_retry_from_the_button(procs, client_app, redis_client, browser, tmp_path):
    worker = procs.worker("-c", "2")
    dash = start_dashboard(procs, auth=AUTH)
    app = client_app.app

    # without credentials: 401, nothing rendered
    from playwright.sync_api import Error as PlaywrightError
    anonymous = browser.new_context()
    assert anonymous.request.get(dash.url + "/").status == 401
    try:
        response = anonymous.new_page().goto(dash.url + "/")
        assert response.status == 401
    except PlaywrightError as exc:  # headless Chromium turns the unanswered Basic challenge into an error
        assert "ERR_INVALID_AUTH_CREDENTIALS" in str(exc)
    anonymous.close()

    ctx = browser.new_context(http_credentials={"username": AUTH[0], "password": AUTH[1]},
                              viewport={"width": 1360, "height": 800})
    page = ctx.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

    page.goto(dash.url + "/#/workers")
    page.locator(f'tr[data-worker="{worker.hostname}"] .badge.online').wait_for(timeout=10000)
    page.locator("#live.ok").wait_for(timeout=10000)

    # live list: tasks sent after the page loaded appear without a reload
    page.goto(dash.url + "/#/tasks")
    page.locator("#tasks-table, .empty").first.wait_for(timeout=10000)
    adds = [client_app.add.delay(i, 100) for i in range(5)]
    sleeper = client_app.sleep_record.delay("browser", "s", 0.3)
    failed = client_app.fail_first.delay("ff-browser")
    for r in adds:
        page.locator(f'tr[data-task-id="{r.id}"][data-state="SUCCESS"]').wait_for(timeout=10000)
    page.locator(f'tr[data-task-id="{failed.id}"][data-state="FAILURE"]').wait_for(timeout=10000)
    page.locator(f'tr[data-task-id="{sleeper.id}"][data-state="SUCCESS"]').wait_for(timeout=10000)
    page.select_option("#filter-state", "FAILURE")
    page.locator(f'#tasks-table tr[data-task-id="{adds[0].id}"]').wait_for(state="detached", timeout=10000)
    assert page.locator("#tasks-table tbody tr").count() == 1
    page.select_option("#filter-state", "")
    page.locator(f'#tasks-table tr[data-task-id="{adds[0].id}"]').wait_for(timeout=10000)
    shot(page, "tasks.png", tmp_path)

    # the failed task, retried from its button, then succeeds
    page.goto(dash.url + "/#/failed")
    row = page.locator(f'#failed-table tr[data-task-id="{failed.id}"]')
    row.locator("button.retry").click()
    link = row.locator(".retried a")
    link.wait_for(timeout=10000)
    new_id = link.get_attribute("title")
    assert new_id and new_id != failed.id
    assert app.AsyncResult(new_id).get(timeout=10) == 2
    shot(page, "failed.png", tmp_path)
    link.click()
    page.locator('h1 .badge[data-state="SUCCESS"]').wait_for(timeout=10000)
    assert page.locator("#task-id").inner_text() == new_id
    assert page.locator("#task-result").inner_text() == "2"
    shot(page, "task.png", tmp_path)

    # task detail of a failure shows its traceback
    page.goto(dash.url + f"/#/task/{failed.id}")
    page.locator("#task-traceback").wait_for(timeout=10000)
    assert "first attempt fails" in page.locator("#task-traceback").inner_text()

    # queues: lengths now and a chart over time
    client_app.add.apply_async((1, 1), queue="nobody-listens")
    client_app.add.apply_async((1, 1), queue="nobody-listens", priority=7)
    page.goto(dash.url + "/#/queues")
    page.locator('tr[data-queue="nobody-listens"] td[data-waiting="2"]').wait_for(timeout=15000)
    # (a flat line has no height: Playwright calls it hidden, so wait for it to be attached)
    page.locator('#queue-chart polyline[data-queue="nobody-listens"]').wait_for(state="attached", timeout=10000)
    page.goto(dash.url + "/#/workers")
    page.locator(f'tr[data-worker="{worker.hostname}"]').wait_for(timeout=10000)
    shot(page, "workers.png", tmp_path)
    page.goto(dash.url + "/#/queues")
    page.locator('#queue-chart polyline[data-queue="nobody-listens"]').wait_for(state="attached", timeout=10000)
    shot(page, "queues.png", tmp_path)

    # dead letters: listed, replayed from the button
    msg = app.build_message("testapp.add", (2, 40))
    app.broker.dead_letter(redis_client, msg.encode(), "rejected by the task: demo", "default", msg.id, "w9@test")
    page.goto(dash.url + "/#/dlq")
    dead_row = page.locator("#dlq-table tbody tr").first
    dead_row.wait_for(timeout=10000)
    shot(page, "dlq.png", tmp_path)
    dead_row.locator("button.replay").click()
    assert app.AsyncResult(msg.id).get(timeout=10) == 42
    page.locator(".empty").wait_for(timeout=10000)

    assert errors == []  # no script error, no failed request on any page
    # a POST without the CSRF header is refused, even from the page itself
    status = page.evaluate("""async (id) => (await fetch(`/api/tasks/${id}/retry`, {method: "POST"})).status""",
                           failed.id)
    assert status == 403
    ctx.close()
