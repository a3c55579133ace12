"""autograder.checks.serving (notebook 06) on the solution's files and on broken ones.

The good files are the %%writefile answer cells of solutions/06; each broken one changes a single
thing, and the check must fail on it with a message that names that thing.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from autograder.checks import serving
from autograder.errors import CheckFailed, NotAnswered, ServerStartError

from conftest import SOLUTIONS, load_solution_module

SKELETONS = Path(serving.__file__).resolve().parents[2] / "server_stub"
GOOD_CONF = 'import os\nbind = f"127.0.0.1:{os.environ.get(\'PORT\', \'8000\')}"\nworkers = 2\ngraceful_timeout = 10\ntimeout = 30\n'


def written_files() -> dict[str, str]:
    """``{file name: text}`` of the solution's %%writefile cells."""
    files = {}
    for cell in json.loads((SOLUTIONS / "06_serving_for_real.ipynb").read_text())["cells"]:
        text = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if cell["cell_type"] == "code" and text.startswith("%%writefile serving/"):
            first, _, body = text.partition("\n")
            files[first.split("serving/")[1].strip()] = body.replace("### BEGIN SOLUTION\n", "").replace("### END SOLUTION\n", "")
    return files


SOLUTION = written_files()


def package(tmp_path: Path, **replace) -> Path:
    """A ``serving`` package in ``tmp_path`` with the solution's files, some replaced by ``replace``.

    ``replace`` maps a file's stem (``app``, ``wsgi``, ``conf``) to its text, or to a
    ``(old, new)`` pair applied to the solution's text.
    """
    folder = tmp_path / "serving"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    names = {"app": "app.py", "wsgi": "wsgi.py", "conf": "gunicorn.conf.py"}
    for stem, name in names.items():
        text = SOLUTION[name]
        change = replace.get(stem)
        if isinstance(change, tuple):
            old, new = change
            assert old in text, f"{old!r} is not in the solution's {name}"
            text = text.replace(old, new)
        elif isinstance(change, str):
            text = change
        (folder / name).write_text(text)
    return folder


def test_the_solution_files_are_in_the_notebook():
    assert set(SOLUTION) == {"app.py", "wsgi.py", "gunicorn.conf.py"}
    assert "def create_app(handler=None, config=None)" in SOLUTION["app.py"]


def test_the_solution_passes_every_check(tmp_path):
    folder = package(tmp_path)
    serving.check_flask_run(folder)
    assert serving.check_gunicorn_config(folder)["workers"] == 2
    serving.check_gunicorn_config(folder, port_env="9123")
    serving.check_gunicorn_serves(folder, concurrent=4)
    serving.check_graceful_shutdown(folder, in_flight=2)


def test_the_skeletons_count_as_not_answered(tmp_path):
    folder = tmp_path / "serving"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    for name in ("app.py", "wsgi.py", "gunicorn.conf.py"):
        (folder / name).write_text((SKELETONS / name).read_text())
    with pytest.raises(NotAnswered, match="NotImplementedError"):
        serving.check_flask_run(folder)
    with pytest.raises(NotAnswered, match="NotImplementedError"):
        serving.check_gunicorn_config(folder)
    with pytest.raises(NotAnswered, match="NotImplementedError"):
        serving.check_graceful_shutdown(folder)


def test_a_missing_folder_or_file_says_which_cell_to_run(tmp_path):
    with pytest.raises(NotAnswered, match="no folder"):
        serving.check_flask_run(tmp_path / "serving")
    folder = package(tmp_path)
    (folder / "gunicorn.conf.py").unlink()
    with pytest.raises(NotAnswered, match="%%writefile serving/gunicorn.conf.py"):
        serving.check_gunicorn_config(folder)
    (folder / "__init__.py").unlink()
    with pytest.raises(CheckFailed, match="__init__.py"):
        serving.check_gunicorn_serves(folder)


@pytest.mark.parametrize("conf, message", [
    ('bind = "0.0.0.0:8000"\nworkers = 2\ngraceful_timeout = 10\ntimeout = 30\n', "every network interface"),
    ('bind = ["127.0.0.1:8000", "0.0.0.0:8000"]\nworkers = 2\ngraceful_timeout = 10\ntimeout = 30\n', "every network interface"),
    ('bind = "localhost:8000"\nworkers = 2\ngraceful_timeout = 10\ntimeout = 30\n', "should be 127.0.0.1"),
    ("workers = 2\ngraceful_timeout = 10\ntimeout = 30\n", "sets no `bind`"),
    (GOOD_CONF.replace("workers = 2", "workers = 1"), "`workers` should be a number from 2 to 4"),
    (GOOD_CONF.replace("workers = 2", "workers = 2.5"), "`workers`"),
    (GOOD_CONF.replace("graceful_timeout = 10", "graceful_timeout = 0"), "`graceful_timeout`"),
    (GOOD_CONF.replace("timeout = 30", "timeout = 5"), "at least graceful_timeout"),
    (GOOD_CONF + "daemon = True\n", "`daemon`"),
    ("import os\nraise RuntimeError('config broke')\n", "RuntimeError: config broke"),
])
def test_a_wrong_config_fails_naming_the_setting(tmp_path, conf, message):
    folder = package(tmp_path, conf=conf)
    with pytest.raises(CheckFailed, match=message) as info:
        serving.check_gunicorn_config(folder)
    assert not isinstance(info.value, NotAnswered)


def test_a_config_that_ignores_PORT_fails_only_when_PORT_is_set(tmp_path):
    folder = package(tmp_path, conf='bind = "127.0.0.1:8000"\nworkers = 2\ngraceful_timeout = 10\ntimeout = 30\n')
    serving.check_gunicorn_config(folder)
    with pytest.raises(CheckFailed, match="PORT"):
        serving.check_gunicorn_config(folder, port_env="9123")


def test_the_check_refuses_to_start_a_daemon(tmp_path):
    folder = package(tmp_path, conf=GOOD_CONF + "daemon = True\n")
    with pytest.raises(CheckFailed, match="daemon"):
        serving.check_gunicorn_serves(folder)


def test_a_graceful_timeout_of_zero_cuts_the_request_off(tmp_path):
    folder = package(tmp_path, conf=GOOD_CONF.replace("graceful_timeout = 10", "graceful_timeout = 0"))
    with pytest.raises(CheckFailed, match="cut off"):
        serving.check_graceful_shutdown(folder)


def test_html_errors_fail_the_flask_check(tmp_path):
    folder = package(tmp_path, app=('        return jsonify({"error": message}), status\n', '        return f"<p>{message}</p>", status\n'))
    with pytest.raises(CheckFailed, match="application/json"):
        serving.check_flask_run(folder)


def test_a_missing_health_route_fails_both_servers(tmp_path):
    folder = package(tmp_path, app=('    @app.get("/health")\n', '    @app.get("/healthz")\n'))
    with pytest.raises(CheckFailed, match="GET /health returned 404"):
        serving.check_flask_run(folder)
    with pytest.raises(CheckFailed, match="GET /health returned 404"):
        serving.check_gunicorn_serves(folder)


def test_wrong_predictions_fail_with_the_row_and_label(tmp_path):
    folder = package(tmp_path, app=("        return jsonify({\"predictions\": predictions})\n",
                                    "        return jsonify({\"predictions\": predictions[::-1]})\n"))
    with pytest.raises(CheckFailed, match="result 0 should have label 'setosa'"):
        serving.check_flask_run(folder)


def test_an_app_that_crashes_at_start_shows_its_log(tmp_path):
    folder = package(tmp_path, app=("    app = Flask(__name__)\n", "    raise RuntimeError('no model today')\n"))
    with pytest.raises(ServerStartError, match="no model today") as info:
        serving.check_flask_run(folder)
    assert not isinstance(info.value, NotAnswered)
    with pytest.raises(ServerStartError, match="exited"):
        serving.check_gunicorn_serves(folder)


def test_start_and_stop_leave_no_process_behind(tmp_path):
    folder = package(tmp_path)
    port = serving.free_port()
    server = serving.start(serving.flask_command(folder / "app.py", port), port, cwd=tmp_path, log_path=tmp_path / "flask.log")
    assert server.get("/health").json() == {"status": "ok"}
    assert server.stop() is not None
    assert server.proc.poll() is not None
    with pytest.raises(requests.ConnectionError):
        server.session.get(server.base_url + "/health", timeout=2)
    assert f"Running on http://127.0.0.1:{port}" in (tmp_path / "flask.log").read_text()


@pytest.fixture(scope="module")
def inbound_rules(tmp_path_factory):
    return load_solution_module("06_serving_for_real.ipynb", tmp_path_factory.mktemp("sol06")).inbound_rules


def rule(port, ip="203.0.113.7"):
    return {"IpProtocol": "tcp", "FromPort": port, "ToPort": port, "IpRanges": [{"CidrIp": f"{ip}/32"}]}


CASES = [
    {"args": ["127.0.0.1", 8000, "203.0.113.7"], "expect": [rule(22)]},
    {"args": ["0.0.0.0", 8000, "203.0.113.7"], "expect": [rule(22), rule(8000)]},
    {"args": ["0.0.0.0", True, "203.0.113.7"], "raises": "ValueError"},
    {"args": ["0.0.0.0", 8000, "203.0.113.0/24"], "raises": "ValueError"},
]


def test_the_solution_inbound_rules_pass(inbound_rules):
    serving.check_inbound_rules(inbound_rules, CASES)


def open_to_the_world(bind_host, app_port, client_ip):
    return [{"IpProtocol": "tcp", "FromPort": p, "ToPort": p, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]} for p in (22, app_port)]


def no_validation(bind_host, app_port, client_ip):
    ports = [22] + ([app_port] if bind_host == "0.0.0.0" else [])
    return [{"IpProtocol": "tcp", "FromPort": p, "ToPort": p, "IpRanges": [{"CidrIp": f"{client_ip}/32"}]} for p in ports]


def type_error_for_bools(bind_host, app_port, client_ip):
    if isinstance(app_port, bool):
        raise TypeError("a bool")
    return no_validation(bind_host, app_port, client_ip)


def unanswered(bind_host, app_port, client_ip):
    raise NotImplementedError()


@pytest.mark.parametrize("fn, error, message", [
    (open_to_the_world, CheckFailed, r"inbound_rules\('127.0.0.1', 8000, '203.0.113.7'\) should return"),
    (no_validation, CheckFailed, r"inbound_rules\('0.0.0.0', True, '203.0.113.7'\) should raise ValueError"),
    (type_error_for_bools, CheckFailed, "raised TypeError: a bool; expected ValueError"),
    (unanswered, NotAnswered, "NotImplementedError"),
])
def test_wrong_inbound_rules_fail(fn, error, message):
    with pytest.raises(error, match=message):
        serving.check_inbound_rules(fn, CASES)
