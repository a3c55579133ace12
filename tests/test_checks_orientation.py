"""autograder.checks.orientation: the environment check, and the checks of notebook 00's exercises."""
from __future__ import annotations

import re
import shlex

import pytest

from autograder.checks import orientation
from autograder.errors import CheckFailed, NotAnswered

REQS = "# web\nFlask==3.1.3\nflask-cors==6.0.5\nmoto[server]==5.2.5  # AWS\n\ntyping_extensions==4.16.0\nrequests>=2.31\n"
PIN_CASES = [
    (REQS, "flask", "3.1.3"),
    ("flask-cors==6.0.5\nflask==3.1.3\n", "flask", "3.1.3"),
    (REQS, "flask-cors", "6.0.5"),
    (REQS, "moto", "5.2.5"),
    (REQS, "Typing-Extensions", "4.16.0"),
    (REQS, "requests", None),
    (REQS, "numpy", None),
]


# --- implementations of the exercises, one right and several wrong -----------------------

def good_pinned_version(text, package):
    return orientation.read_pins(text).get(orientation.normalize(package))


def prefix_pinned_version(text, package):
    """Matches the start of a line: flask-cors==6.0.5 is taken for flask when it comes first."""
    for line in text.splitlines():
        if line.lower().startswith(package.lower()) and "==" in line:
            return line.split("==")[1].split()[0]
    return None


def case_sensitive_pinned_version(text, package):
    for line in text.splitlines():
        name, _, version = line.partition("==")
        if name.split("[")[0].strip() == package:
            return version.split("#")[0].strip()
    return None


def object_pinned_version(text, package):
    from packaging.version import Version

    version = good_pinned_version(text, package)
    return Version(version) if version else None


def unwritten(*args, **kwargs):
    raise NotImplementedError()


def crashing(*args, **kwargs):
    raise ValueError("not enough values to unpack")


def good_mismatches(pins, installed):
    return [{"package": n, "pinned": v, "installed": installed.get(n)} for n, v in sorted(pins.items())
            if installed.get(n) != v]


def unsorted_mismatches(pins, installed):
    return [{"package": n, "pinned": v, "installed": installed.get(n)} for n, v in pins.items() if installed.get(n) != v]


def skips_missing_mismatches(pins, installed):
    return [m for m in good_mismatches(pins, installed) if m["installed"] is not None]


def mutating_mismatches(pins, installed):
    for name in pins:
        installed.setdefault(name, None)
    return good_mismatches(pins, installed)


def tuple_mismatches(pins, installed):
    return tuple(good_mismatches(pins, installed))


MISMATCH_CASES = [
    ({"flask": "3.1.3", "numpy": "2.4.6"}, {"flask": "3.1.3", "numpy": "2.4.6"}, []),
    ({"zope-interface": "7.0", "boto3": "1.44.5", "moto": "5.2.5"}, {"zope-interface": "6.0", "boto3": "1.4", "moto": "5.2.5"},
     [{"package": "boto3", "pinned": "1.44.5", "installed": "1.4"},
      {"package": "zope-interface", "pinned": "7.0", "installed": "6.0"}]),
    ({"requests": "2.34.2"}, {}, [{"package": "requests", "pinned": "2.34.2", "installed": None}]),
]


def good_tunnel(key_file, host, port=8888, user="ubuntu"):
    return shlex.join(["ssh", "-i", key_file, "-N", "-L", f"{port}:127.0.0.1:{port}", f"{user}@{host}"])


def unquoted_tunnel(key_file, host, port=8888, user="ubuntu"):
    return f"ssh -i {key_file} -N -L {port}:127.0.0.1:{port} {user}@{host}"


def open_tunnel(key_file, host, port=8888, user="ubuntu"):
    return f"ssh -i {shlex.quote(key_file)} -N -L 0.0.0.0:{port}:127.0.0.1:{port} {user}@{host}"


def no_n_tunnel(key_file, host, port=8888, user="ubuntu"):
    return f"ssh -i {shlex.quote(key_file)} -L {port}:127.0.0.1:{port} {user}@{host}"


def fixed_port_tunnel(key_file, host, port=8888, user="ubuntu"):
    return f"ssh -i {shlex.quote(key_file)} -N -L 8888:127.0.0.1:8888 {user}@{host}"


TUNNEL_CASES = [
    {"key_file": "servelab.pem", "host": "ec2-3-35-10-2.ap-northeast-2.compute.amazonaws.com"},
    {"key_file": "keys/course key.pem", "host": "3.35.10.2", "port": 8890, "user": "ec2-user"},
]


# --- the environment check ---------------------------------------------------------------

def test_read_pins_handles_comments_options_extras_markers_and_name_spelling():
    text = (
        "# comment\n-r base.txt\n--index-url https://example.invalid/simple\n"
        "moto[server] == 5.2.5  # AWS\nzope.interface==7.0\n"
        'tomli==2.0.1 ; python_version < "3.11"\nrequests>=2.31\nTyping_Extensions==4.16.0\n'
    )
    assert orientation.read_pins(text) == {
        "moto": "5.2.5", "zope-interface": "7.0", "tomli": "2.0.1", "typing-extensions": "4.16.0",
    }


def test_the_environment_report_names_each_mismatch(tmp_path):
    from importlib.metadata import version

    flask = version("flask")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"Flask=={flask}\nnumpy==0.0.1\nservelab-no-such-package==1.0\n")
    report = orientation.environment_report(requirements)
    assert report["checked"] == 3
    assert report["python_ok"] is True
    assert report["mismatches"] == [
        {"package": "numpy", "pinned": "0.0.1", "installed": version("numpy")},
        {"package": "servelab-no-such-package", "pinned": "1.0", "installed": None},
    ]


def test_the_repository_environment_matches_its_pins():
    report = orientation.environment_report()
    assert report["checked"] > 100
    assert report["mismatches"] == []


def test_the_report_prints_mismatches(tmp_path, capsys):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("servelab-no-such-package==1.0\n")
    orientation.print_report(orientation.environment_report(requirements))
    out = capsys.readouterr().out
    assert "MISMATCH servelab-no-such-package: pinned 1.0, installed not installed" in out


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("localhost", True), (b"127.0.0.1", True),
    ("192.0.2.1", False), ("10.0.0.1", False), ("example.com", False), ("", False), (None, False),
])
def test_is_loopback(host, loopback):
    assert orientation.is_loopback(host) is loopback


def test_the_course_trains_offline_and_the_guard_refuses_other_addresses():
    report = orientation.check_offline()
    assert report["guard_works"] is True
    assert report["blocked"] == []
    assert report["iris_file"].endswith("iris.csv") and report["iris_rows"] == 150
    assert report["model_files"] == ["meta.json", "model.joblib"]


# --- exercise checks ---------------------------------------------------------------------

def test_a_correct_pinned_version_passes():
    orientation.check_pinned_version(good_pinned_version, PIN_CASES)


@pytest.mark.parametrize("impl, message", [
    (prefix_pinned_version, re.escape("pinned_version('flask-cors==6.0.5\\nflask==3.1.3\\n', 'flask') should return '3.1.3'; it returned '6.0.5'")),
    (case_sensitive_pinned_version, "'flask'\\) should return '3.1.3'; it returned None"),
    (object_pinned_version, re.escape("should return '3.1.3'; it returned <Version('3.1.3')> (a Version, not plain data)")),
    (crashing, "should return '3.1.3'; it raised ValueError: not enough values to unpack"),
])
def test_a_wrong_pinned_version_fails_saying_what_came_back(impl, message):
    with pytest.raises(CheckFailed, match=message):
        orientation.check_pinned_version(impl, PIN_CASES)


def test_an_unwritten_exercise_is_reported_as_not_answered():
    with pytest.raises(NotAnswered, match="pinned_version raised NotImplementedError"):
        orientation.check_pinned_version(unwritten, PIN_CASES)


def test_a_correct_version_mismatches_passes():
    orientation.check_version_mismatches(good_mismatches, MISMATCH_CASES)


@pytest.mark.parametrize("impl, message", [
    (unsorted_mismatches, "should return \\[\\{'package': 'boto3'.*it returned \\[\\{'package': 'zope-interface'"),
    (skips_missing_mismatches, "should return \\[\\{'package': 'requests', 'pinned': '2.34.2', 'installed': None\\}\\]; it returned \\[\\]"),
    (mutating_mismatches, "changed the dicts it was given"),
    (tuple_mismatches, "should return a list; it returned a tuple: \\[\\]"),
])
def test_a_wrong_version_mismatches_fails_saying_what_came_back(impl, message):
    with pytest.raises(CheckFailed, match=message):
        orientation.check_version_mismatches(impl, MISMATCH_CASES)


def test_a_correct_tunnel_command_passes():
    orientation.check_tunnel_command(good_tunnel, TUNNEL_CASES)


@pytest.mark.parametrize("impl, message", [
    (unquoted_tunnel, "the shell reads the key file\\(s\\) as \\['keys/course'\\] \\(quote a path that has spaces"),
    (open_tunnel, "binds the local end to '0.0.0.0', so anyone on your network could reach JupyterLab"),
    (no_n_tunnel, "it should include -N"),
    (fixed_port_tunnel, "should forward local port 8890 to port 8890 on the instance"),
])
def test_a_wrong_tunnel_command_fails_with_the_reason(impl, message):
    with pytest.raises(CheckFailed, match=message):
        orientation.check_tunnel_command(impl, TUNNEL_CASES)


@pytest.mark.parametrize("command, problem", [
    ("ssh -N -i k.pem -L8888:localhost:8888 ubuntu@h", None),
    ("ssh -i k.pem -N -L 127.0.0.1:8888:127.0.0.1:8888 ubuntu@h", None),
    ("ssh -i k.pem -N -L 8888:h:8888 ubuntu@h", "forwards to 'h'"),
    ("ssh -i k.pem -N -L 8888:127.0.0.1:8888 ubuntu@h ls", "it should end with the login ubuntu@h"),
    ("ssh -i k.pem -N ubuntu@h", "exactly one port with -L"),
    ("scp -i k.pem -N -L 8888:127.0.0.1:8888 ubuntu@h", "start with ssh"),
    ("ssh -i 'k.pem -N", "cannot split it into words"),
])
def test_tunnel_problem_accepts_equivalent_spellings_and_names_the_fault(command, problem):
    found = orientation.tunnel_problem(command, "k.pem", "h")
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found
