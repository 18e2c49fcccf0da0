"""The dashboard as users run it: `minique -A testapp dashboard` against real workers.

The JSON API and the security rules are tested over HTTP; the pages in a real headless
Chromium driven by Playwright (skipped only when no Chromium is installed). With
MINIQUE_DOCS_SCREENSHOTS=1 the browser test also refreshes docs/img/*.png.
"""
import base64
import datetime
import json
import os
import pickle
import re
import secrets
import shutil
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from malformed import batch, entry, good_event_entry, malformed_event_entries
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


def start_dashboard(procs, *args, auth=None, token=None, settings=None, env=None) -> Dash:
    procs.count += 1
    argv = ["-A", "testapp", "dashboard", "--port", "0", "--refresh", "0.3", "--sample-interval", "0.3",
            "--rescan-interval", "0.5", *args]
    if auth:
        argv += ["--basic-auth", ":".join(auth)]
    if token:
        argv += ["--token", token]
    proc = Proc(argv, procs.env(settings, env), APPS, procs.tmp_path / f"dashboard{procs.count}.log")
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


def raw_http(dash, method, path, headers, body=b"", timeout=5.0):
    """One request written by hand on a socket that this side keeps open (as a slow or hostile client
    does): (status, the whole answer as text). Fails when no answer comes within `timeout` seconds."""
    where = urlsplit(dash.url)
    head = f"{method} {path} HTTP/1.1\r\nHost: {where.netloc}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with socket.create_connection((where.hostname, where.port), timeout=timeout) as sock:
        sock.sendall(head.encode() + body)  # (and no shutdown: the client may still be sending, as far as it knows)
        answer = b""
        try:
            while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except TimeoutError:
            raise AssertionError(f"no answer within {timeout}s to {method} {path} {headers}: {answer!r}") from None
    text = answer.decode(errors="replace")
    return int(text.split(" ", 2)[1]), text


def basic(auth):
    return "Basic " + base64.b64encode(":".join(auth).encode()).decode()


def test_bodies_are_read_only_after_auth_and_within_limits(procs, client_app):
    from minique.dashboard.server import MAX_BODY
    dash = start_dashboard(procs, auth=AUTH)
    retry = "/api/tasks/00000000-0000-0000-0000-000000000000/retry"
    # not authenticated: 401 without waiting for the body it announced (this client never sends it)
    status, text = raw_http(dash, "POST", retry, {"Content-Length": "1000"})
    assert status == 401 and "connection: close" in text.lower()
    # authenticated but without the CSRF token: 403, the body still unread
    status, _ = raw_http(dash, "POST", retry, {"Authorization": basic(AUTH), "Content-Length": "1000"})
    assert status == 403
    ok = {"Authorization": basic(AUTH), "X-CSRF-Token": dash.csrf}
    # a length that is not one number within the cap: 400 or 413 at once, nothing read, connection closed
    # (Content-Length: -1 used to read until the client stopped sending)
    for length, expected in (("-1", 400), ("abc", 400), ("1e3", 400), (" 12 34", 400), (str(MAX_BODY + 1), 413),
                             ("9" * 30, 400), ("99999999999", 413)):
        status, text = raw_http(dash, "POST", retry, dict(ok, **{"Content-Length": length}), b'{"a": "b"}')
        assert (status, "connection: close" in text.lower()) == (expected, True), (length, text)
    status, text = raw_http(dash, "POST", retry, ok, b"{}")  # no Content-Length at all
    assert status == 400 and "Content-Length" in text
    status, _ = raw_http(dash, "POST", retry, dict(ok, **{"Transfer-Encoding": "chunked"}), b"2\r\n{}\r\n0\r\n\r\n")
    assert status == 400
    # a well-formed body within the cap is read and used (revoke of an unknown id: accepted)
    status, text = raw_http(dash, "POST", "/api/tasks/some-id/revoke", dict(ok, **{"Content-Length": "20"}),
                            b'{"terminate": false}')
    assert status == 200, text
    assert dash.post("/api/tasks/some-id/revoke", {"terminate": False})[0] == 200  # and over keep-alive (urllib)


def test_bad_query_parameters_are_400_with_a_short_message(procs, client_app):
    dash = start_dashboard(procs)
    for path in ("/api/tasks?limit=abc", "/api/tasks?limit=1e400", "/api/tasks?offset=1.5", "/api/tasks?since=nan",
                 "/api/tasks?until=inf", "/api/tasks?since=x", "/api/failed?limit=x", "/api/failed?limit=nan",
                 "/api/dlq?count=x", "/api/dlq?count=99999999999999999999999", "/api/dlq?start=bogus",
                 "/api/dlq?start=1-2-3", "/api/tasks?" + "&".join(f"a{i}=1" for i in range(40))):
        status, _, data = dash.request("GET", path)
        error = json.loads(data)["error"]
        assert status == 400 and len(error) < 100 and "Error" not in error, (path, status, error)
    status, _, data = dash.request("GET", "/api/tasks?search=" + "x" * 9000)
    assert status == 414
    # in range or clamped: fine
    assert dash.request("GET", "/api/tasks?limit=5000&offset=-3&since=0&until=1e12")[0] == 200
    assert dash.request("GET", "/api/dlq?count=0&start=0-0")[0] == 200


def test_the_redis_password_is_masked_in_the_log_and_in_answers(procs, redis_server, redis_client):
    user, password = "dash-test-user", "pw-" + secrets.token_hex(8)
    redis_client.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all")
    try:
        masked = f"redis://{user}:***@127.0.0.1:{redis_server.port}/0"
        dash = start_dashboard(procs, env={"MINIQUE_BROKER_URL": masked.replace("***", password)})
        assert f"(broker {masked})" in dash.proc.log()
        assert dash.get("/api/session")["broker"] == masked
        assert dash.get("/api/workers") == {"workers": []}
        redis_client.execute_command("ACL", "DELUSER", user)  # Redis refuses the dashboard from now on
        status, _, data = dash.request("GET", "/api/workers")
        assert status == 503 and masked in json.loads(data)["error"], data
        wait_for(lambda: "events stream unreadable" in dash.proc.log(), 10, "the follower's retry line")
        assert password not in dash.proc.log()
    finally:
        redis_client.execute_command("ACL", "DELUSER", user)


# --- messages shown and re-sent: decoded for display only, signatures first ------------------------------
KEY = "s3cret"
SIGNED_WITH_PICKLE = json.dumps({"security_key": KEY, "accept_content": ["json", "msgpack", "pickle"]})


class OpensAFile:
    """Unpickling this creates the file at `path` (what an attacker's pickle would do instead)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_dead_letters_are_shown_without_pickle_and_replayed_only_when_signed(procs, client_app, redis_client,
                                                                            tmp_path):
    procs.worker("-c", "1", settings=SIGNED_WITH_PICKLE)
    dash = start_dashboard(procs, settings=SIGNED_WITH_PICKLE)
    app = client_app.app
    app.conf.update(security_key=KEY, accept_content=["json", "msgpack", "pickle"])
    opened = [tmp_path / "opened-unsigned", tmp_path / "opened-signed"]
    unsigned_pickle = app.build_message("testapp.identity", (), None, {"serializer": "pickle"})
    unsigned_pickle = unsigned_pickle._replace(body=pickle.dumps([[OpensAFile(opened[0])], {}]), signature=None)
    signed_pickle = app.build_message("testapp.identity", (OpensAFile(opened[1]),), None, {"serializer": "pickle"})
    signed_json = app.build_message("testapp.add", (20, 22), None, {"priority": 5})
    unsigned_json = app.build_message("testapp.add", (1, 1), None, {})._replace(signature=None)
    for msg in (unsigned_pickle, signed_pickle, signed_json, unsigned_json):
        app.broker.dead_letter(redis_client, msg.encode(), "parked by the test", "default", msg.id, "w9@test")
    app.broker.dead_letter(redis_client, b"\x00junk", "junk", "default", None, "w9@test")

    listing = {d["task_id"]: d for d in dash.get("/api/dlq")["dead_letters"]}
    assert not opened[0].exists() and not opened[1].exists()  # no pickle was loaded, signed or not
    for msg in (unsigned_pickle, unsigned_json):
        shown = listing[msg.id]
        assert (shown["name"], shown["args"], shown["verified"]) == (msg.task, None, False)
        assert "signature does not verify" in shown["problem"]
    shown = listing[signed_pickle.id]
    assert (shown["args"], shown["verified"]) == (None, True) and "pickle" in shown["problem"]
    shown = listing[signed_json.id]
    assert (shown["name"], shown["args"], shown["kwargs"], shown["verified"]) == ("testapp.add", "[20, 22]", "{}",
                                                                                 True)
    assert listing[None]["name"] is None and "undecodable" in listing[None]["problem"]

    entry_of = {d["task_id"]: d["entry"] for d in listing.values()}
    for refused in (unsigned_json.id, unsigned_pickle.id, None):
        status, answer = dash.post(f"/api/dlq/{entry_of[refused]}/replay")
        assert status == 409 and "not replayed" in answer["error"], answer
    status, answer = dash.post(f"/api/dlq/{entry_of[signed_json.id]}/replay")
    assert status == 200 and answer["sent"]["args"] == "[20, 22]" and answer["sent"]["priority"] == 5
    assert app.AsyncResult(signed_json.id).get(timeout=10) == 42
    assert {d["task_id"] for d in dash.get("/api/dlq")["dead_letters"]} == {unsigned_pickle.id, signed_pickle.id,
                                                                          unsigned_json.id, None}
    assert dash.post(f"/api/dlq/{entry_of[signed_json.id]}/replay")[0] == 404
    assert not opened[0].exists() and not opened[1].exists()


def test_task_pages_never_unpickle_a_result_nor_import_an_exception_module(procs, client_app, redis_client,
                                                                          tmp_path):
    """The result store is as writable as the rest of Redis: the dashboard decodes json and msgpack
    results only, and describes a stored exception from its name instead of importing its module."""
    opened, imported = tmp_path / "opened", tmp_path / "imported"
    (tmp_path / "dash_side_effect.py").write_text(
        f"open({str(imported)!r}, 'w').close()\n\nclass Boom(Exception):\n    pass\n")
    path = os.pathsep.join([str(APPS), str(tmp_path), os.environ.get("PYTHONPATH", "")])
    dash = start_dashboard(procs, settings=SIGNED_WITH_PICKLE, env={"PYTHONPATH": path})
    backend = client_app.app.backend
    backend.write_meta(redis_client, "pickled-result", "SUCCESS",
                       backend.encode_meta("pickled-result", "SUCCESS", OpensAFile(opened), serializer="pickle"))
    exc = {"exc_type": "Boom", "exc_module": "dash_side_effect", "exc_message": ["kaboom", 7]}
    backend.write_meta(redis_client, "importing-error", "FAILURE",
                       backend.encode_meta("importing-error", "FAILURE", exc, "Traceback: ...", serializer="json"))
    backend.write_meta(redis_client, "junk-record", "SUCCESS", b"\xc1 not msgpack")
    typed = {"raw": b"\xff", "day": datetime.date(2026, 11, 30), "n": 1}  # JSON with types: shown as their reprs
    backend.write_meta(redis_client, "typed-result", "SUCCESS", backend.encode_meta("typed-result", "SUCCESS", typed))
    assert dash.get("/api/tasks/typed-result")["result"] == {"raw": "b'\\xff'", "day": "datetime.date(2026, 11, 30)",
                                                             "n": 1}
    shown = dash.get("/api/tasks/pickled-result")
    assert shown["state"] == "SUCCESS" and "pickle result is not decoded" in shown["result"]
    shown = dash.get("/api/tasks/importing-error")
    assert (shown["state"], shown["error"], shown["traceback"]) == ("FAILURE", "Boom('kaboom', 7)", "Traceback: ...")
    assert dash.get("/api/tasks/junk-record")["state"] == "UNKNOWN"
    assert not opened.exists() and not imported.exists()


def forge_failed_event(redis_client, uuid, message=None, body=None):
    """A task-failed event as any Redis client can add one: the fields say one thing, `message` (and the
    `body` of the old format) may say another."""
    ev = {"type": "task-failed", "uuid": uuid, "name": "testapp.record", "queue": "default", "retries": 0,
          "args": "['forged', 'harmless']", "kwargs": "{}", "exception": "RuntimeError('forged')"}
    if message is not None:
        ev["message"] = message
    if body is not None:
        ev.update(body=body, content_type="json", priority=0)
    redis_client.xadd("minique:events", entry(batch([[-1, time.time(), -1, ev]])))


def test_retry_resends_the_signed_message_it_shows_and_refuses_forged_events(procs, client_app, redis_client):
    procs.worker("-c", "1", settings=json.dumps({"security_key": KEY}))
    dash = start_dashboard(procs, settings=json.dumps({"security_key": KEY}))
    app = client_app.app
    app.conf.security_key = KEY
    from minique import serializers
    evil = serializers.dumps([["forged-books", "evil"], {}], "json")

    # a real failure: Retry re-sends its signed message as it was, and it runs
    failed = client_app.fail_first.delay("ff-signed")
    with pytest.raises(RuntimeError):
        failed.get(timeout=10)
    wait_for(lambda: dash.get(f"/api/tasks/{failed.id}").get("resend"), 10, "the failure in the index")
    resend = dash.get(f"/api/tasks/{failed.id}")["resend"]
    assert (resend["args"], resend["verified"], resend["problem"]) == ("['ff-signed']", True, None)
    status, answer = dash.post(f"/api/tasks/{failed.id}/retry")
    assert status == 200 and answer["sent"]["args"] == "['ff-signed']", answer
    wait_for(lambda: app.AsyncResult(failed.id).state == "SUCCESS", 10, "the re-sent task's success")

    # forged events: never a message built from their fields, never bytes that do not verify
    unsigned = app.build_message("testapp.record", ("forged-books", "evil"), None, {})._replace(signature=None)
    forge_failed_event(redis_client, unsigned.id, unsigned.encode(), body=evil)
    foreign = app.build_message("testapp.record", ("forged-books", "foreign"), None, {})  # signed, another id
    forge_failed_event(redis_client, "forged-foreign", foreign.encode(), body=evil)
    forge_failed_event(redis_client, "forged-fields-only", body=evil)                      # the old format
    forge_failed_event(redis_client, "forged-junk", b"\x00junk", body=evil)
    genuine = app.build_message("testapp.record", ("forged-books", "genuine"), None, {})   # its own, signed
    forge_failed_event(redis_client, genuine.id, genuine.encode(), body=evil)
    wait_for(lambda: dash.get("/api/failed")["total"] == 5, 10, "the forged failures in the index")

    for tid, why in ((unsigned.id, "signature does not verify"), ("forged-foreign", f"is task {foreign.id}'s"),
                     ("forged-fields-only", "not captured"), ("forged-junk", "not re-sent")):
        status, answer = dash.post(f"/api/tasks/{tid}/retry")
        assert status == 409 and why in answer["error"], (tid, answer)
    # what the page shows is decoded from the bytes Retry sends, not from the event's fields
    detail = dash.get(f"/api/tasks/{genuine.id}")
    assert detail["args"] == "['forged', 'harmless']"  # (what the event claims)
    assert (detail["resend"]["args"], detail["resend"]["verified"]) == ("['forged-books', 'genuine']", True)
    status, answer = dash.post(f"/api/tasks/{genuine.id}/retry")
    assert status == 200 and answer["sent"] == detail["resend"]
    assert app.AsyncResult(genuine.id).get(timeout=10) == "genuine"
    # one worker process runs its queue in order: anything sent before the genuine message has run
    assert redis_client.lrange("forged-books", 0, -1) == [b"genuine"]
    assert redis_client.xlen("minique:dlq") == 0  # and nothing unsigned was sent to be dead-lettered


def test_malformed_events_never_stop_the_follower(procs, redis_client):
    """Any Redis client can add events. A dashboard skips malformed ones and follows on; so does a
    fresh one, which reads them all again from the start of the stream."""
    for fields in malformed_event_entries():
        redis_client.xadd("minique:events", fields)
    redis_client.xadd("minique:events", good_event_entry("good-before"))
    dash = start_dashboard(procs)

    def indexed(d, tid):
        return any(t["id"] == tid for t in d.get("/api/tasks?limit=1000")["tasks"])
    wait_for(lambda: indexed(dash, "good-before"), 10, "the good event after the malformed ones")
    for fields in malformed_event_entries():  # and while it follows
        redis_client.xadd("minique:events", fields)
    redis_client.xadd("minique:events", good_event_entry("good-after", "task-failed"))
    wait_for(lambda: indexed(dash, "good-after"), 10, "the good event after more malformed ones")
    assert dash.proc.popen.poll() is None and "skipped a malformed event" in dash.proc.log()
    # other records any client can write: a heartbeat that is no map, a dead letter that is no text
    redis_client.hset("minique:workers", mapping={"junk@test": b"\xc1", "five@test": b"\x05",
                                                  "text-ts@test": b"\x81\xa2ts\xa3now"})
    redis_client.xadd("minique:dlq", {"m": b"\x00", "reason": b"\xff\xfe", "time": b"soon", "queue": b"\xff"})
    restarted = start_dashboard(procs)
    wait_for(lambda: indexed(restarted, "good-before") and indexed(restarted, "good-after"), 10,
             "both good events in a fresh dashboard")
    for d in (dash, restarted):
        for path in ("/api/overview", "/api/workers", "/api/tasks?search=good", "/api/failed", "/api/queues",
                     "/api/tasks/good-after", "/api/dlq", "/"):
            assert d.request("GET", path)[0] == 200, path
    assert restarted.get("/api/workers")["workers"] == []
    [dead] = restarted.get("/api/dlq")["dead_letters"]
    assert dead["time"] is None and "undecodable" in dead["problem"]


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

    # a failed task, re-sent from the dashboard (its message as it was: same id), succeeds
    failed = client_app.fail_first.delay("ff-api")
    with pytest.raises(RuntimeError):
        failed.get(timeout=10)
    wait_for(lambda: any(t["id"] == failed.id and t["retryable"] for t in dash.get("/api/failed")["tasks"]), 10,
             "the failure in the index")
    detail = dash.get(f"/api/tasks/{failed.id}")
    assert "RuntimeError" in detail["traceback"] and "first attempt fails" in detail["error"]
    assert (detail["resend"]["name"], detail["resend"]["args"], detail["resend"]["verified"]) == (
        "testapp.fail_first", "['ff-api']", None)
    status, answer = dash.post(f"/api/tasks/{failed.id}/retry")
    assert status == 200, answer
    assert answer["id"] == failed.id and answer["sent"]["args"] == "['ff-api']"
    assert dash.post(f"/api/tasks/{failed.id}/retry")[0] == 409  # re-sent: no longer FAILURE
    wait_for(lambda: app.AsyncResult(failed.id).state == "SUCCESS", 10, "the re-sent task's success")
    assert app.AsyncResult(failed.id).get(timeout=1) == 2
    wait_for(lambda: dash.get(f"/api/tasks/{failed.id}")["state"] == "SUCCESS", 10, "its success in the index")
    detail = dash.get(f"/api/tasks/{failed.id}")
    assert detail["resent"] == 1 and detail["result"] == 2 and detail["error"] is None
    assert "re-sent (dashboard)" in [h["type"] for h in detail["history"]]
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
    assert [(w["hostname"], w["status"], w["concurrency"], w["places"]) for w in workers] == [
        (worker.hostname, "online", 2, 2)]
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


def shot(page, name, tmp_path, full_page=True):
    page.evaluate("document.getElementById('toast').hidden = true")
    page.screenshot(path=str(tmp_path / name), full_page=full_page)
    if os.environ.get("MINIQUE_DOCS_SCREENSHOTS"):
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS_IMG / name), full_page=full_page)


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

    # task detail of a failure shows its traceback, and what Retry would send (decoded from those bytes)
    page.goto(dash.url + f"/#/task/{failed.id}")
    page.locator("#task-traceback").wait_for(timeout=10000)
    assert "first attempt fails" in page.locator("#task-traceback").inner_text()
    assert "['ff-browser']" in page.locator("#task-resend").inner_text()

    # the failed task, retried from its button (its message re-sent as it was), then succeeds
    page.goto(dash.url + "/#/failed")
    row = page.locator(f'#failed-table tr[data-task-id="{failed.id}"]')
    row.wait_for(timeout=10000)
    shot(page, "failed.png", tmp_path)
    row.locator("button.retry").click()
    row.wait_for(state="detached", timeout=10000)  # no longer a failure
    assert "['ff-browser']" in page.locator("#toast").inner_text()
    wait_for(lambda: app.AsyncResult(failed.id).state == "SUCCESS", 10, "the re-sent task's success")
    page.goto(dash.url + f"/#/task/{failed.id}")
    page.locator('h1 .badge[data-state="SUCCESS"]').wait_for(timeout=10000)
    assert page.locator("#task-id").inner_text() == failed.id
    assert page.locator("#task-result").inner_text() == "2"
    shot(page, "task.png", tmp_path)

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


# --- running tasks, retries, rejections, workers, queues, throughput (issue 19) ------------------------
ACTIONS = ("/api/tasks/{tid}/retry", "/api/tasks/{tid}/revoke", "/api/dlq/1-0/replay", "/api/workers/{host}/shutdown",
           "/api/workers/{host}/pool_grow", "/api/workers/{host}/pool_shrink")


def test_every_action_is_refused_without_auth_or_csrf_and_audited(procs, client_app):
    worker = procs.worker("-c", "1")
    dash = start_dashboard(procs, auth=AUTH)
    wait_for(lambda: any(w["hostname"] == worker.hostname for w in dash.get("/api/workers")["workers"]), 10,
             "the worker on the dashboard")
    tid = "11111111-2222-3333-4444-555555555555"
    for template in ACTIONS:
        path = template.format(tid=tid, host=worker.hostname)
        body = {"terminate": True} if path.endswith("revoke") else {"n": 1}
        assert dash.request("POST", path, body, auth=False, headers={"X-CSRF-Token": dash.csrf})[0] == 401, path
        assert dash.post(path, body, csrf=False)[0] == 403, path
        assert dash.request("POST", path, body, headers={"X-CSRF-Token": "forged"})[0] == 403, path
        assert dash.request("POST", path, body, headers={"X-CSRF-Token": dash.csrf,
                                                         "Origin": "http://evil.example"})[0] == 403, path
        assert dash.request("GET", path)[0] == 404, path  # a GET never acts
    log = dash.proc.log()
    for action, target in (("retry", tid), ("revoke", tid), ("replay", "1-0"), ("shutdown", worker.hostname),
                           ("pool_grow", worker.hostname), ("pool_shrink", worker.hostname)):
        assert f"dashboard action {action} on {target} by admin from 127.0.0.1: refused: missing or wrong " \
               f"X-CSRF-Token" in log, action
        assert f"dashboard action {action} on {target} by anonymous from 127.0.0.1: refused: not authenticated" \
               in log, action
    assert "s3cret" not in log  # (the audit names the user, never the password)
    # a forged line break in what the audit log quotes stays on its line
    assert dash.post("/api/workers/evil%0Aforged%20audit%20line/shutdown", csrf=False)[0] == 403
    assert "dashboard action shutdown on evil\\nforged audit line by admin" in dash.proc.log()
    assert not any(line.startswith("forged") for line in dash.proc.log().splitlines())
    # nothing was done: the worker still runs one pool process and answers
    assert client_app.app.control.inspect(destination=[worker.hostname], timeout=2).stats()[worker.hostname][
        "pool"]["max-concurrency"] == 1
    assert dash.post("/api/workers/nobody@nowhere/shutdown")[0] == 404
    assert dash.post(f"/api/workers/{worker.hostname}/pool_grow", {"n": "many"})[0] == 400
    assert dash.post(f"/api/tasks/{tid}/revoke", {"terminate": "yes"})[0] == 400
    assert worker.popen.poll() is None


def test_worker_actions_offline_workers_and_their_last_tasks(procs, client_app):
    worker = procs.worker("-c", "1")
    dash = start_dashboard(procs, "--prune-after", "3", auth=AUTH)

    def me():
        return next((w for w in dash.get("/api/workers")["workers"] if w["hostname"] == worker.hostname), None)
    wait_for(me, 10, "the worker on the dashboard")
    status, answer = dash.post(f"/api/workers/{worker.hostname}/pool_grow", {"n": 1})
    assert status == 200 and answer["ok"], answer
    wait_for(lambda: me()["concurrency"] == 2, 10, "the pool grown to 2")
    status, answer = dash.post(f"/api/workers/{worker.hostname}/pool_shrink", {"n": 1})
    assert status == 200, answer
    wait_for(lambda: me()["concurrency"] == 1, 10, "the pool shrunk to 1")
    assert "dashboard action pool_grow on " + worker.hostname + " by admin from 127.0.0.1: done (n=1)" in \
        dash.proc.log()

    # tasks run just before the worker stops count in its processed total
    results = [client_app.add.delay(i, 1) for i in range(7)]
    for r in results:
        r.get(timeout=10)
    status, answer = dash.post(f"/api/workers/{worker.hostname}/shutdown")
    assert status == 200, answer
    assert worker.wait(20) == 0
    offline = wait_for(lambda: (w := me()) and w["status"] == "offline" and w, 10, "the worker offline")
    assert offline["processed"] == 7 and offline["active"] == 0
    overview = dash.get("/api/overview")
    assert overview["workers"]["online"] == 0
    # and after --prune-after seconds it is no longer listed
    wait_for(lambda: me() is None, 10, "the offline worker pruned")
    assert dash.get("/api/overview")["workers"] == {"online": 0, "total": 0}
    assert "dashboard action shutdown on " + worker.hostname + " by admin from 127.0.0.1: done" in dash.proc.log()


def test_running_retrying_and_rejected_tasks_queues_pruned_and_throughput_kept(procs, client_app, redis_client):
    app = client_app.app
    worker = procs.worker("-c", "2")
    dash = start_dashboard(procs, "--prune-after", "2")

    # a task sent to the idle worker is listed STARTED, with its worker, while it runs
    held = client_app.hold.delay("dash-held")
    running = wait_for(lambda: next((t for t in dash.get("/api/tasks?state=STARTED")["tasks"] if t["id"] == held.id),
                                    None), 5, "the running task on the dashboard")
    assert running["worker"] == worker.hostname and running["started"] <= time.time()
    assert redis_client.llen("dash-held:gate") == 0  # (it still runs: nobody opened its gate)
    detail = dash.get(f"/api/tasks/{held.id}")
    assert (detail["state"], detail["worker"], detail["id"]) == ("STARTED", worker.hostname, held.id)
    redis_client.rpush("dash-held:gate", 1)
    assert held.get(timeout=10) == "dash-held"

    # a retrying task shows when it runs next
    retrying = client_app.retry_then_report.delay("dash-retry", 1, 30)
    waiting = wait_for(lambda: next((t for t in dash.get("/api/tasks?state=RETRY")["tasks"] if t["id"] == retrying.id),
                                    None), 10, "the retry on the dashboard")
    assert time.time() + 20 < waiting["next_run"] <= time.time() + 31
    assert dash.get(f"/api/tasks/{retrying.id}")["next_run"] == waiting["next_run"]
    app.control.revoke(retrying.id)

    # a message no worker can run is REJECTED with its name and arguments (from its dead letter)
    unknown = app.send_task("testapp.no_such_task", args=(4, "four"))
    rejected = wait_for(lambda: next((t for t in dash.get("/api/tasks?state=REJECTED")["tasks"]
                                      if t["id"] == unknown.id and t["name"]), None), 10, "the rejection")
    assert (rejected["name"], rejected["args"], rejected["kwargs"]) == ("testapp.no_such_task", "[4, 'four']", "{}")

    # a queue nobody consumes is listed while it holds messages, then no longer once empty and unused
    client_app.add.apply_async((1, 1), queue="short-lived")
    wait_for(lambda: dash.get("/api/queues")["now"]["queues"].get("short-lived", {}).get("waiting") == 1, 10,
             "the queue listed")
    redis_client.xtrim("minique:{short-lived}:p0", maxlen=0)  # (emptied; the key stays, so SCAN still finds it)
    wait_for(lambda: "short-lived" not in dash.get("/api/queues")["now"]["queues"], 10, "the queue pruned")
    assert "default" in dash.get("/api/queues")["now"]["queues"]

    # throughput: counted per 10 s in Redis, kept across a restart even when the events are gone
    for r in [client_app.add.delay(i, i) for i in range(5)]:
        r.get(timeout=10)
    failing = client_app.fail.delay("counted")
    failing.get(timeout=10, propagate=False)
    want = {"succeeded_total": 6, "failed_total": 1, "retried_total": 1}  # (hold + 5 adds; fail; the retry)

    def totals(d):
        tp = d.get("/api/throughput")
        return {k: tp[k] for k in want}
    wait_for(lambda: totals(dash) == want, 10, "the throughput counts")
    tp = dash.get("/api/throughput")
    assert tp["source"] == "redis" and tp["bucket"] == 10 and len(tp["succeeded"]) == 360
    assert abs(sum(tp["succeeded"]) * tp["bucket"] - 6) < 1e-9
    second = start_dashboard(procs)  # reads the stream from its start: counts nothing twice
    wait_for(lambda: second.get(f"/api/tasks/{failing.id}")["state"] == "FAILURE", 10, "the second one caught up")
    assert totals(second) == want and totals(dash) == want
    dash.proc.close()
    second.proc.close()
    redis_client.xtrim("minique:events", maxlen=0)
    restarted = start_dashboard(procs)
    assert totals(restarted) == want


@needs_chromium
def test_browser_under_load_running_tasks_actions_and_throughput(procs, client_app, redis_client, browser, tmp_path):
    """The pages under load: running tasks tick, a retry shows its next run, a rejected message its name;
    ids are whole and copyable; terminate from a task's page; the throughput chart; a worker's pool grown,
    shrunk and the worker shut down from its row (screenshots of each page with MINIQUE_DOCS_SCREENSHOTS=1)."""
    app = client_app.app
    worker = procs.worker("-c", "3")
    dash = start_dashboard(procs, auth=AUTH)
    ctx = browser.new_context(http_credentials={"username": AUTH[0], "password": AUTH[1]},
                              viewport={"width": 1360, "height": 800})
    ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=dash.url)
    page = ctx.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(dash.url + "/#/tasks")
    page.locator("#tasks-table, .empty").first.wait_for(timeout=10000)

    # load: two long tasks, many short ones, failures, a retry a minute away, a message nobody can run,
    # and messages waiting in a queue no worker consumes
    adds = [client_app.add.delay(i, i) for i in range(150)]
    for i in range(40):
        client_app.add.apply_async((i, 1), queue="reports", priority=i % 3 * 3)
    for r in adds:
        r.get(timeout=20)
    fails = [client_app.fail.delay(f"load {i}") for i in range(4)]
    retrying = client_app.retry_then_report.delay("b-retry", 1, 60)
    unknown = app.send_task("testapp.no_such_task", args=(7, "seven"))
    held = [client_app.hold.delay(f"b-hold-{i}", 60) for i in range(2)]

    row = page.locator(f'#tasks-table tr[data-task-id="{held[0].id}"][data-state="STARTED"]')
    row.wait_for(timeout=10000)
    assert row.locator("a.id-short").inner_text() == held[0].id  # whole (shortened by the style sheet only)
    first = row.locator(".elapsed").inner_text()
    # (looked up again at each poll: a refresh renders the table anew, and a handle on the old element
    # would watch a detached node that never ticks)
    ticking = f'#tasks-table tr[data-task-id="{held[0].id}"] .elapsed'
    page.wait_for_function("([sel, before]) => { const el = document.querySelector(sel); "
                           "return el !== null && el.textContent !== before; }", arg=[ticking, first], timeout=5000)
    row.locator("button.copy").click()
    page.locator("#toast", has_text=f"Copied {held[0].id}").wait_for(timeout=5000)
    assert page.evaluate("navigator.clipboard.readText()") == held[0].id
    retry_row = page.locator(f'#tasks-table tr[data-task-id="{retrying.id}"][data-state="RETRY"]')
    retry_row.wait_for(timeout=10000)
    assert re.search(r"retry \d\d:\d\d:\d\d in [1-6]\d s", retry_row.locator(".next-run").inner_text())
    rejected_row = page.locator(f'#tasks-table tr[data-task-id="{unknown.id}"][data-state="REJECTED"]')
    rejected_row.wait_for(timeout=10000)
    page.wait_for_function("(el) => el.textContent.includes(\"[7, 'seven']\")",
                           arg=rejected_row.element_handle(), timeout=10000)
    assert "testapp.no_such_task" in rejected_row.inner_text()
    for r in fails:
        r.get(timeout=10, propagate=False)
    shot(page, "tasks.png", tmp_path, full_page=False)

    # a running task's page: its elapsed time, and Terminate
    page.goto(dash.url + f"/#/task/{held[0].id}")
    page.locator("#task-elapsed").wait_for(timeout=10000)
    assert page.locator("#task-id").inner_text() == held[0].id
    shot(page, "task-running.png", tmp_path)
    page.locator("#terminate-button").click()
    page.locator('h1 .badge[data-state="REVOKED"]').wait_for(timeout=15000)
    redis_client.rpush("b-hold-1:gate", 1)
    assert held[1].get(timeout=10) == "b-hold-1"

    page.goto(dash.url + "/#/queues")
    page.locator('#queue-chart polyline[data-queue="reports"]').wait_for(state="attached", timeout=10000)
    page.locator('tr[data-queue="reports"] td[data-waiting="40"]').wait_for(timeout=10000)
    shot(page, "queues.png", tmp_path)
    page.goto(dash.url + "/#/failed")
    page.locator(f'#failed-table tr[data-task-id="{fails[-1].id}"]').wait_for(timeout=10000)
    shot(page, "failed.png", tmp_path)
    page.goto(dash.url + "/#/dlq")
    page.locator("#dlq-table tbody tr").first.wait_for(timeout=10000)
    shot(page, "dlq.png", tmp_path)

    # the Workers page: the throughput chart, and the worker's row actions
    page.goto(dash.url + "/#/workers")
    page.wait_for_function("() => Number(document.getElementById('tp-succeeded')?.textContent) >= 151",
                           timeout=15000)
    assert int(page.locator("#tp-failed").inner_text()) >= 4
    page.locator('#throughput-chart polyline[data-series="succeeded"]').wait_for(state="attached", timeout=5000)
    wrow = page.locator(f'tr[data-worker="{worker.hostname}"]')
    wrow.wait_for(timeout=10000)
    shot(page, "workers.png", tmp_path)
    wrow.locator("button.grow").click()
    page.locator(f'tr[data-worker="{worker.hostname}"] td', has_text="× 4").wait_for(timeout=10000)
    page.locator(f'tr[data-worker="{worker.hostname}"] button.shrink').click()
    page.locator(f'tr[data-worker="{worker.hostname}"] td', has_text="× 3").wait_for(timeout=10000)
    page.fill("#rate-limit [name=task]", "testapp.add")
    page.fill("#rate-limit [name=rate]", "50/s")
    page.locator("#rate-limit button").click()
    page.locator("#toast", has_text="testapp.add: 50/s on 1 worker(s)").wait_for(timeout=10000)
    assert client_app.app.control.inspect(timeout=2).stats()[worker.hostname]["rate_limits"] == {"testapp.add": 50.0}
    page.locator(f'tr[data-worker="{worker.hostname}"] button.shutdown').click()
    page.locator(f'tr[data-worker="{worker.hostname}"][data-status="offline"]').wait_for(timeout=20000)
    assert worker.wait(20) == 0
    processed = page.locator(f'tr[data-worker="{worker.hostname}"] td.processed').inner_text()
    assert int(processed) >= 155  # (150 adds, 4 failures, a retry: the terminated process's count is kept)
    assert page.locator(f'tr[data-worker="{worker.hostname}"] button.shutdown').count() == 0
    assert errors == []
    log = dash.proc.log()
    for action in ("revoke", "pool_grow", "pool_shrink", "rate_limit", "shutdown"):
        assert f"dashboard action {action} on " in log and " by admin from 127.0.0.1: done" in log, action
    ctx.close()


def test_a_rate_limit_set_from_the_dashboard_reaches_every_worker(procs, client_app):
    """POST /api/rate_limit: CSRF-checked, validated, broadcast (app.control.rate_limit), audited."""
    workers = [procs.worker("-c", "1") for _ in range(2)]
    dash = start_dashboard(procs, auth=AUTH)
    assert dash.post("/api/rate_limit", {"task": "testapp.add", "rate_limit": "5/s"}, csrf=False)[0] == 403
    assert dash.post("/api/rate_limit", {"task": "testapp.add", "rate_limit": "fast"})[0] == 400
    assert dash.post("/api/rate_limit", {"task": "", "rate_limit": "5/s"})[0] == 400
    status, answer = dash.post("/api/rate_limit", {"task": "testapp.add", "rate_limit": "5/s"})
    assert status == 200 and set(answer["answers"]) == {w.hostname for w in workers}, answer
    stats = client_app.app.control.inspect(timeout=2).stats()
    assert all(s["rate_limits"] == {"testapp.add": 5.0} for s in stats.values()) and len(stats) == 2
    assert "dashboard action rate_limit on every worker by admin from 127.0.0.1: done (testapp.add 5/s)" in \
        dash.proc.log()
    status, answer = dash.post("/api/rate_limit", {"task": "testapp.add", "rate_limit": 0})
    assert status == 200
    assert all(not s["rate_limits"] for s in client_app.app.control.inspect(timeout=2).stats().values())
