"""autograder.checks.shell: the bounded command runner, the echo server, and notebook 02's checks."""
from __future__ import annotations

import json
import os
import re

import pytest

from autograder.checks import shell
from autograder.errors import CheckFailed, NotAnswered, Timeout

GOOD = {
    "CMD_WRITE": "echo hello > out.txt",
    "CMD_APPEND": "echo world >> out.txt",
    "CMD_JOIN": "cat part1.txt part2.txt > whole.txt",
    "CMD_ERRORS": "ls notes.txt missing.txt 2> errors.txt",
    "CMD_BOTH": "ls notes.txt missing.txt > all.txt 2>&1",
    "CMD_STDIN": "wc -l < notes.txt",
    "CMD_COUNT": "cat app.log | grep ERROR | wc -l",
}
CURL_GET = "curl -s {url}/health"
CURL_POST = """curl -s {url}/predict -H "Content-Type: application/json" -d '{"instances": [[5.1, 3.5, 1.4, 0.2]]}'"""
CURL_POST_FILE = 'curl -s {url}/predict -H "Content-Type: application/json" -d @request.json'


def with_(**changes) -> dict:
    return {**GOOD, **changes}


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] == "Z"
    except OSError:
        return True


# --- the runner --------------------------------------------------------------------------

def test_a_run_keeps_the_streams_apart_and_sees_the_files():
    r = shell.run_command("cat in.txt; ls in.txt nothere; echo made > new.txt", {"in.txt": "data\n"})
    assert r.stdout == "data\nin.txt\n"
    assert "nothere" in r.stderr and "data" not in r.stderr
    assert r.exit_code == 0
    assert r.files == {"in.txt": "data\n", "new.txt": "made\n"}


def test_a_run_sees_a_clean_environment_and_a_temporary_home(monkeypatch):
    monkeypatch.setenv("SERVELAB_SECRET", "do-not-leak")
    monkeypatch.setenv("http_proxy", "http://192.0.2.1:3128")
    r = shell.run_command('echo "[$SERVELAB_SECRET][$http_proxy]"; cat "$HOME/.curlrc"; pwd')
    lines = r.stdout.splitlines()
    assert lines[0] == f"[][{shell.DEAD_PROXY}]"
    assert "max-time = 5" in lines
    assert lines[-1] != os.getcwd() and "servelab-sh-" in lines[-1]


def test_a_run_that_hangs_is_stopped_with_everything_it_started():
    r = shell.run_command("sleep 60 & echo $! > pid; wait", timeout=1)
    assert r.timed_out and r.exit_code is None
    assert gone(int(r.files["pid"]))


def test_a_run_cannot_write_an_endless_file():
    r = shell.run_command("head -c 40000000 /dev/zero > big; echo $? > rc", timeout=20)
    assert r.files["rc"].strip() != "0"


def test_curl_reaches_loopback_and_nothing_else(server):
    r = shell.run_command(f"curl -s {server.base_url}/health")
    assert json.loads(r.stdout)["status"] == "ok"
    # Any host but the three loopback names goes to the dead proxy. 127.0.0.2 stands in for
    # another host: it is not on that list, yet even a regression here stays on this machine.
    r = shell.run_command("curl -sv http://127.0.0.2:1/")
    assert r.exit_code == 7
    assert "Trying 127.0.0.1:9" in r.stderr and "127.0.0.2 port" not in r.stderr


def test_history_expansion_when_asked_for():
    assert shell.run_command("echo a\n!!", history=True).stdout == "a\na\n"
    assert shell.run_command("echo a\n!!").stdout.startswith("a\n")
    assert "!!" in shell.run_command("echo a\n!!").stderr


def test_stdin_text_reaches_the_command():
    assert shell.run_command("wc -l", stdin="1\n2\n").stdout.strip() == "2"


def test_the_sandbox_keeps_files_between_runs(capsys):
    box = shell.Sandbox()
    box.run("echo kept > a.txt")
    box.run("cat a.txt; ls nothere")
    out = capsys.readouterr().out
    assert "$ cat a.txt; ls nothere\nkept\n[stderr] ls: cannot access 'nothere'" in out
    assert out.rstrip().endswith("[exit code 2]")
    assert box.files() == {"a.txt": "kept\n"}


# --- answers -----------------------------------------------------------------------------

def test_answers_reports_unset_names_as_not_answered():
    with pytest.raises(NotAnswered, match="CMD_APPEND not set yet"):
        shell.answers({"CMD_WRITE": "echo hi > out.txt"}, "CMD_WRITE", "CMD_APPEND")
    with pytest.raises(NotAnswered, match="CMD_WRITE not set yet"):
        shell.answers({"CMD_WRITE": None}, "CMD_WRITE")


def test_answers_wants_non_empty_strings():
    with pytest.raises(CheckFailed, match="CMD_WRITE should be a shell command in a string.*it is \\['echo'\\]"):
        shell.answers({"CMD_WRITE": ["echo"]}, "CMD_WRITE")
    assert shell.answers({"A": "ls", "B": "pwd", "C": "x"}, "A", "B") == {"A": "ls", "B": "pwd"}


# --- the file and stream checks ----------------------------------------------------------

def test_correct_commands_pass_every_check():
    shell.check_write_append(GOOD)
    shell.check_join(GOOD)
    shell.check_streams(GOOD)
    shell.check_pipe(GOOD)


@pytest.mark.parametrize("check, changes, message", [
    (shell.check_write_append, {"CMD_WRITE": "echo hello >> out.txt"},
     "out.txt should hold 'hello\\\\n' \\(1 line\\); it held 'old line 1\\\\nold line 2\\\\nhello\\\\nhello\\\\n' \\(4 lines\\)"),
    (shell.check_write_append, {"CMD_APPEND": "echo world > out.txt"},
     "after running CMD_WRITE then CMD_APPEND then CMD_APPEND .* should hold .* \\(3 lines\\); it held 'world\\\\n' \\(1 line\\)"),
    (shell.check_write_append, {"CMD_WRITE": "echo hello"}, "out.txt should exist; it does not"),
    (shell.check_write_append, {"CMD_WRITE": "echo 'hello > out.txt"}, "CMD_WRITE exited with code 2; it printed on stderr"),
    (shell.check_join, {"CMD_JOIN": "cat part1.txt > whole.txt; cat part2.txt > whole.txt"},
     "whole.txt should hold 'first part\\\\nsecond part\\\\nmore of it\\\\n' \\(3 lines\\); it held 'second part"),
    (shell.check_streams, {"CMD_ERRORS": "ls notes.txt missing.txt > errors.txt"}, "errors.txt should contain 'missing.txt'"),
    (shell.check_streams, {"CMD_ERRORS": "ls notes.txt missing.txt 2>&1 > errors.txt"},
     "errors.txt should contain 'missing.txt'; it held 'notes.txt\\\\n' \\(CMD_ERRORS exited with code 2\\)"),
    (shell.check_streams, {"CMD_ERRORS": "ls notes.txt missing.txt 2> errors.txt; cat errors.txt"},
     "CMD_ERRORS should not print 'missing.txt' on stdout"),
    (shell.check_streams, {"CMD_BOTH": "ls notes.txt missing.txt 2>&1 > all.txt"}, "all.txt should contain 'missing.txt'.*order matters"),
    (shell.check_streams, {"CMD_BOTH": "ls notes.txt missing.txt > all.txt"}, "all.txt should contain 'missing.txt'; it held 'notes.txt"),
    (shell.check_streams, {"CMD_BOTH": "ls notes.txt missing.txt > all.txt 2>&1; echo extra >&2"},
     "CMD_BOTH should print nothing on stderr; it printed 'extra'"),
    (shell.check_streams, {"CMD_STDIN": "wc -l notes.txt"}, "CMD_STDIN should use <"),
    (shell.check_streams, {"CMD_STDIN": "wc -c < notes.txt"}, "CMD_STDIN should print '3' on stdout; it printed '17'"),
    (shell.check_pipe, {"CMD_COUNT": "grep -c ERROR app.log"}, "CMD_COUNT should use a pipe"),
    (shell.check_pipe, {"CMD_COUNT": "grep ERROR app.log || wc -l"}, "CMD_COUNT should use a pipe"),
    (shell.check_pipe, {"CMD_COUNT": "cat app.log | grep -i error | wc -l"}, "CMD_COUNT should print '3' on stdout; it printed '4'"),
])
def test_a_wrong_command_fails_saying_what_was_expected_and_what_came_back(check, changes, message):
    with pytest.raises(CheckFailed, match=message):
        check(with_(**changes))


def test_the_pipe_check_uses_the_log_it_is_given():
    shell.check_pipe(GOOD, "INFO a\nINFO b\n")
    with pytest.raises(CheckFailed, match="should print '0' on stdout; it printed '3'"):
        shell.check_pipe(with_(CMD_COUNT="echo 3 | cat"), "INFO a\nINFO b\n")


def test_check_runs_bounds_a_command_that_never_ends():
    with pytest.raises(Timeout, match="X did not finish within 0.5 s"):
        shell.check_runs({"X": "sleep 30"}, [{"why": "it sleeps", "run": ["X"]}], timeout=0.5)


def test_check_runs_can_demand_a_file_is_absent():
    case = {"why": "no leftovers", "run": ["X"], "files": {"tmp.txt": None}}
    shell.check_runs({"X": "echo hi > keep.txt"}, [case])
    with pytest.raises(CheckFailed, match="tmp.txt should not exist; it does"):
        shell.check_runs({"X": "echo hi > tmp.txt"}, [case])


# --- the echo app, in process ------------------------------------------------------------

@pytest.fixture(scope="module")
def iris_handler():
    from autograder.harness import DEFAULT_MODEL_DIR
    from server_stub.handler import Context
    from server_stub.iris_handler import IrisHandler
    from server_stub.model import ensure_model

    handler = IrisHandler()
    handler.initialize(Context(ensure_model(DEFAULT_MODEL_DIR)))
    return handler


def test_the_echo_app_answers_and_logs_what_it_received(iris_handler, tmp_path):
    log = tmp_path / "log.jsonl"
    client = shell.echo_app(iris_handler, {"log": str(log)}).test_client()
    r = client.get("/health?x=1")
    assert r.status_code == 200 and r.get_json()["status"] == "ok"
    assert r.get_json()["received"] == {"method": "GET", "path": "/health", "query": {"x": "1"}, "content_type": None, "body": ""}
    r = client.post("/predict", data='{"instances": [[5.1, 3.5, 1.4, 0.2]]}', content_type="application/x-www-form-urlencoded")
    assert r.status_code == 415 and "application/x-www-form-urlencoded" in r.get_json()["error"]
    r = client.post("/predict", json={"instances": [[6.7, 3.1, 5.6, 2.4]]})
    assert r.status_code == 200 and r.get_json()["predictions"][0]["label"] == "virginica"
    assert client.post("/predict", json={"instances": [[1, 2]]}).status_code == 400
    assert client.post("/predict", json={"rows": []}).status_code == 400
    assert client.post("/predict", data="{", content_type="application/json").status_code == 400
    assert client.delete("/echo").get_json()["received"]["method"] == "DELETE"
    assert client.get("/nowhere").status_code == 404
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["method"], e["path"], e["status"]) for e in entries] == [
        ("GET", "/health", 200), ("POST", "/predict", 415), ("POST", "/predict", 200), ("POST", "/predict", 400),
        ("POST", "/predict", 400), ("POST", "/predict", 400), ("DELETE", "/echo", 200), ("GET", "/nowhere", 404),
    ]
    assert entries[1]["json"] == {"instances": [[5.1, 3.5, 1.4, 0.2]]}
    assert entries[2]["response"] == r.get_json()


# --- the curl checks, against one live server --------------------------------------------

@pytest.fixture(scope="module")
def server():
    with shell.echo_server() as srv:
        yield srv


def test_correct_curl_commands_pass(server):
    shell.check_curl_get(CURL_GET, server)
    shell.check_curl_post(CURL_POST, server)
    shell.check_curl_post_file(CURL_POST_FILE, [
        {"instances": [[6.0, 2.7, 4.1, 1.0], [6.7, 3.1, 5.6, 2.4]]},
        {"instances": [[5.1, 3.5, 1.4]]},
        '{\n  "instances": [\n    [6.0, 2.7, 4.1, 1.0]\n  ]\n}\n',
    ], server)
    methods = [(r["method"], r["path"]) for r in server.requests()[-5:]]
    assert methods == [("GET", "/health")] + [("POST", "/predict")] * 4


@pytest.mark.parametrize("check, command, message", [
    (shell.check_curl_get, "curl -s -i {url}/health", "should print just the server's JSON answer.*HTTP/1.1 200 OK"),
    (shell.check_curl_get, "curl -s http://127.0.0.1:5000/health", "has no \\{url\\}"),
    (shell.check_curl_get, "curl -s {url}/health --resolve x:80:127.0.0.1 http://127.0.0.1:5000/", "not a fixed one"),
    (shell.check_curl_get, "curl -s {url}/healthz", "CURL_GET sent GET /healthz; expected GET /health"),
    (shell.check_curl_get, "echo '{url}/health'", "CURL_GET should be a curl command"),
    (shell.check_curl_get, "curl -s {url}:1/health", "CURL_GET sent no request to the server \\(curl exit code 3"),
    (shell.check_curl_post, CURL_POST.replace(' -H "Content-Type: application/json"', ""),
     re.escape("CURL_POST sent Content-Type 'application/x-www-form-urlencoded'; expected 'application/json'")),
    (shell.check_curl_post, CURL_POST.replace('"instances"', "instances"), "CURL_POST sent the body '\\{instances: \\[\\[5.1"),
    (shell.check_curl_post, CURL_POST.replace("curl -s", "curl -s -X PUT"), "CURL_POST sent PUT /predict; expected POST /predict"),
    (shell.check_curl_post, CURL_POST.replace("curl -s", "curl -s -o answer.json"), "CURL_POST printed nothing"),
])
def test_a_wrong_curl_command_fails_with_what_the_server_saw(server, check, command, message):
    with pytest.raises(CheckFailed, match=message):
        check(command, server)


def test_the_file_post_must_print_error_answers_too(server):
    with pytest.raises(CheckFailed, match="CURL_POST_FILE printed nothing.*-f hides answers with an error status"):
        shell.check_curl_post_file(CURL_POST_FILE.replace("curl -s", "curl -sf"), [{"instances": [[5.1]]}], server)


def test_the_file_post_must_send_the_file(server):
    with pytest.raises(CheckFailed, match="CURL_POST_FILE sent the body"):
        shell.check_curl_post_file(CURL_POST, [{"instances": [[6.0, 2.7, 4.1, 1.0]]}], server)
