"""Checks for notebook 01, cloud setup: key pair, security group, instance, ssh command.

Nothing here talks to AWS. :class:`MotoServer` runs moto (a local fake of the AWS API) as its
own process on 127.0.0.1, with its request log in a file. Every check starts a fresh one, runs
the student's function in another process (:func:`autograder.isolate.run_isolated`) with an
EC2 client pointed at it, reads the result back with ``describe_*`` calls, and stops the server.
What comes back from the student's process is plain data: the return value, the exception if
one was raised, and the EC2 calls it made.

Run as ``python -m autograder.checks.cloud READY_FILE`` this module is the server process: it
writes its port to ``READY_FILE`` and serves until it is stopped.
"""
from __future__ import annotations

import atexit
import os
import shlex
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from autograder.errors import CheckFailed, NotAnswered, ServerStartError
from autograder.isolate import log_tail, run_isolated, spawn, stop_process

REGION = "us-east-1"
# Canonical's Ubuntu 16.04 image from moto's bundled catalogue (owner 099720109477). moto
# accepts any id, but this one is real there: describe_images finds it, and its user is "ubuntu".
UBUNTU_AMI = "ami-785db401"
START_TIMEOUT = 20.0
CALL_TIMEOUT = 30.0
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# Credentials moto accepts; botocore gets them explicitly, so it never searches for real ones.
DUMMY_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def offline_environment(endpoint_url: str | None = None) -> dict:
    """Environment variables that keep boto3 on loopback.

    Dummy credentials, no instance-metadata lookups (169.254.169.254), no proxy for loopback,
    and, given ``endpoint_url``, every AWS client sent there (``AWS_ENDPOINT_URL``) and every
    other HTTP(S) request sent to a closed loopback port, so that it fails instead of leaving
    the machine.
    """
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "NO_PROXY": "127.0.0.1,localhost,::1",
        "no_proxy": "127.0.0.1,localhost,::1",
    }
    if endpoint_url:
        env["AWS_ENDPOINT_URL"] = endpoint_url
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            env[name] = "http://127.0.0.1:9"  # the discard port: nothing listens there
    return env


def _require_loopback(endpoint_url: str) -> None:
    host = urlsplit(endpoint_url).hostname
    if host not in LOOPBACK:
        raise ValueError(f"endpoint {endpoint_url!r} is not on this machine; the checks only talk to a local moto server")


def ec2_client(endpoint_url: str):
    """A boto3 EC2 client for the moto server at ``endpoint_url`` (loopback only).

    Credentials and region are given explicitly, no proxy is used, and every wait is bounded.
    """
    _require_loopback(endpoint_url)
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=5, read_timeout=20, retries={"max_attempts": 1, "mode": "standard"}, proxies={}
    )
    return boto3.client("ec2", region_name=REGION, endpoint_url=endpoint_url, config=config, **DUMMY_CREDENTIALS)


class MotoServer:
    """moto's fake AWS API, in its own process on a free port of 127.0.0.1.

    ::

        with MotoServer() as aws:
            ec2 = ec2_client(aws.endpoint_url)

    or ``aws = MotoServer().start()`` ... ``aws.stop()`` across notebook cells (it is also
    stopped when Python exits). Its request log goes to a file, never to the notebook.
    """

    def __init__(self, start_timeout: float = START_TIMEOUT):
        self.start_timeout = start_timeout
        self.endpoint_url: str | None = None
        self._proc = None
        self._workdir: Path | None = None

    def start(self) -> "MotoServer":
        if self._proc is not None:
            return self
        self._workdir = Path(tempfile.mkdtemp(prefix="servelab-moto-"))
        ready, log_path = self._workdir / "port", self._workdir / "moto.log"
        self._proc = spawn(["-m", "autograder.checks.cloud", str(ready)], self._workdir, log_path)
        atexit.register(self.stop)
        deadline = time.monotonic() + self.start_timeout
        while not ready.exists():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                tail = log_tail(log_path)
                self.stop()
                raise ServerStartError("the local moto server did not start." + (f" Its last output:\n{tail}" if tail else ""))
            time.sleep(0.05)
        self.endpoint_url = f"http://127.0.0.1:{int(ready.read_text())}"
        return self

    def stop(self) -> None:
        """Stop the server process and remove its files. Safe to call twice."""
        if self._proc is not None:
            stop_process(self._proc)
            self._proc = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        self.endpoint_url = None
        atexit.unregister(self.stop)

    def __enter__(self) -> "MotoServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _serve(ready_file: str) -> None:
    """Server side of :class:`MotoServer`: serve on 127.0.0.1 until stopped."""
    os.environ.update(offline_environment())
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    tmp = ready_file + ".tmp"
    Path(tmp).write_text(str(port))
    os.replace(tmp, ready_file)
    # Normally stopped by MotoServer.stop(); if whoever started it dies first (a killed
    # kernel), it is re-parented, and then it exits too rather than linger.
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(0.5)
    shutil.rmtree(Path(ready_file).parent, ignore_errors=True)


# --- the student's side of a check (runs in a child process) ---------------------------------

def _plain(value):
    """JSON-ready copy of what boto3 and student code return (paths, tuples, datetimes...)."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def _call_each(fn, endpoint_url: str, arg_lists: list) -> list:
    """Child side: ``fn(ec2, *args)`` for each ``args``, with an EC2 client on the moto server.

    One observation per call: ``{"value": ...}`` or ``{"raised": {type, message, mro}}``, plus
    ``calls`` (each EC2 operation it made, with its parameters) and ``key_material`` (what
    CreateKeyPair returned).
    """
    from autograder.isolate import describe_exception

    os.environ.update(offline_environment(endpoint_url))
    ec2 = ec2_client(endpoint_url)
    calls, keys = [], []
    ec2.meta.events.register(
        "provide-client-params.ec2", lambda params, model, **kw: calls.append({"op": model.name, "params": _plain(params)})
    )
    ec2.meta.events.register("after-call.ec2.CreateKeyPair", lambda parsed, **kw: keys.append(parsed.get("KeyMaterial")))
    observations = []
    for args in arg_lists:
        del calls[:], keys[:]
        try:
            obs = {"value": _plain(fn(ec2, *args))}
        except Exception as exc:  # noqa: BLE001 - judged by the parent
            obs = {"raised": {**describe_exception(exc), "mro": [c.__name__ for c in type(exc).__mro__]}}
        obs["calls"], obs["key_material"] = list(calls), list(keys)
        observations.append(obs)
    return observations


# --- the judging side ------------------------------------------------------------------------

def _run(fn, aws: MotoServer, arg_lists: list, what: str) -> list:
    return run_isolated(_call_each, fn, aws.endpoint_url, arg_lists, timeout=CALL_TIMEOUT, what=what)


def _call_text(name: str, args: list) -> str:
    return f"{name}(ec2, {', '.join(repr(a) for a in args)})"


def _not_answered(call: str) -> NotAnswered:
    return NotAnswered(f"{call} raised NotImplementedError: write it, then run its cell again.")


def _returned(obs: dict, call: str):
    """The value ``call`` returned; a raised exception becomes NotAnswered or CheckFailed."""
    if "raised" in obs:
        r = obs["raised"]
        if r["type"] == "NotImplementedError":
            raise _not_answered(call)
        raise CheckFailed(f"{call} raised {r['type']}: {r['message']}")
    return obs["value"]


def _expect_raise(obs: dict, call: str, expected: str, why: str) -> None:
    """``call`` must have raised ``expected`` (or a subclass of it)."""
    if "value" in obs:
        raise CheckFailed(f"{call} should raise {expected} ({why}); it returned {obs['value']!r}.")
    r = obs["raised"]
    if r["type"] == "NotImplementedError":
        raise _not_answered(call)
    if expected not in r.get("mro", [r["type"]]):
        raise CheckFailed(f"{call} should raise {expected} ({why}); it raised {r['type']}: {r['message']}")


def _key_names(ec2) -> list[str]:
    return [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]]


OLD_KEY = "an older private key\n"


def check_key_pair(save_key_pair, cases: list) -> None:
    """``save_key_pair(ec2, key_name, directory)`` creates a key pair and saves its private key.

    Each case is ``{"key_name": ...}``, with an optional ``"subdir"`` (the directory does not
    exist yet and must be created) and ``"existing": True`` (a file is already at the key's path).
    The key goes to ``<directory>/<key_name>.pem``, exactly as AWS returned it, with mode 0400,
    and the path is returned. An existing file is never overwritten: FileExistsError is raised
    before anything is created in AWS.
    """
    with MotoServer() as aws, tempfile.TemporaryDirectory(prefix="servelab-keys-") as tmp:
        arg_lists = []
        for i, case in enumerate(cases):
            # Without a subdir the directory exists; with one, only its first parent does.
            directory = Path(tmp) / f"case{i}"
            directory.mkdir()
            if case.get("subdir"):
                directory = directory / case["subdir"]
            if case.get("existing"):
                directory.mkdir(parents=True, exist_ok=True)
                (directory / f"{case['key_name']}.pem").write_text(OLD_KEY)
            arg_lists.append([case["key_name"], str(directory)])
        observations = _run(save_key_pair, aws, arg_lists, "your save_key_pair")
        names = _key_names(ec2_client(aws.endpoint_url))
        for case, args, obs in zip(cases, arg_lists, observations):
            _judge_key_pair(case, args, obs, names)


def _judge_key_pair(case: dict, args: list, obs: dict, names: list) -> None:
    key_name, directory = args
    call = _call_text("save_key_pair", args)
    expected = Path(directory) / f"{key_name}.pem"
    if case.get("existing"):
        _expect_raise(obs, call, "FileExistsError", f"{expected.name} already exists")
        if expected.read_text() != OLD_KEY:
            raise CheckFailed(f"{call} changed the existing {expected.name}; a private key must never be overwritten.")
        if key_name in names:
            raise CheckFailed(
                f"{call} raised FileExistsError, but only after creating the key pair in AWS. Check for the file "
                "first, so that a failed call leaves nothing behind."
            )
        return
    value = _returned(obs, call)
    if not isinstance(value, str) or Path(value).resolve() != expected.resolve():
        raise CheckFailed(f"{call} should return the path of the key file, {str(expected)!r}; it returned {value!r}.")
    if key_name not in names:
        raise CheckFailed(f"after {call}, AWS has no key pair named {key_name!r}; create it with ec2.create_key_pair(KeyName=...).")
    try:
        st = os.lstat(expected)
    except FileNotFoundError:
        raise CheckFailed(f"{call} returned {value!r}, but there is no file there.") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckFailed(f"{expected} should be a regular file; it is not.")
    mode = stat.S_IMODE(st.st_mode)
    if mode != 0o400:
        raise CheckFailed(
            f"the key file's mode is {mode:04o}; expected 0400 (chmod 400): readable by you only, writable by "
            "no one. ssh refuses a private key that other users can read ('UNPROTECTED PRIVATE KEY FILE')."
        )
    material = obs["key_material"][-1] if obs["key_material"] else None
    content = expected.read_text(errors="replace")
    if material is None or content.strip() != material.strip():
        raise CheckFailed(
            f"{expected.name} should hold the private key exactly as AWS returned it (response['KeyMaterial']); "
            f"it starts with {content[:40]!r}."
        )


def _rule_set(permissions: list) -> set:
    """``{(protocol, from, to, source)}`` for every source of every rule."""
    rules = set()
    for p in permissions:
        proto, lo, hi = p.get("IpProtocol"), p.get("FromPort"), p.get("ToPort")
        sources = [r.get("CidrIp") for r in p.get("IpRanges", [])]
        sources += [r.get("CidrIpv6") for r in p.get("Ipv6Ranges", [])]
        sources += [f"group {g.get('GroupId')}" for g in p.get("UserIdGroupPairs", [])]
        sources += [f"prefix list {x.get('PrefixListId')}" for x in p.get("PrefixListIds", [])]
        for source in sources:
            rules.add((proto, lo, hi, source))
    return rules


def _describe_rule(rule: tuple) -> str:
    proto, lo, hi, source = rule
    if proto == "-1":
        what = "all traffic"
    else:
        what = f"{proto} {lo}" if lo == hi else f"{proto} {lo}-{hi}"
    return f"{what} from {source}"


def _opens(rule: tuple, port: int) -> bool:
    proto, lo, hi, _ = rule
    return proto == "-1" or (proto == "tcp" and lo is not None and lo <= port <= (hi if hi is not None else lo))


def check_security_group(create_security_group, cases: list) -> None:
    """``create_security_group(ec2, name, my_ip, model_port)`` returns the id of a new group.

    Each case is ``{"name", "my_ip", "model_port"}``. The group's inbound rules are exactly
    SSH (tcp 22) from ``my_ip/32`` and ``model_port`` from anywhere; its outbound rules still
    let the instance reach HTTPS and HTTP (git clone, pip, apt). A case with ``"rejects": True``
    has a ``my_ip`` that is not one IPv4 address: ValueError, and no group is created.
    """
    with MotoServer() as aws:
        arg_lists = [[c["name"], c["my_ip"], c["model_port"]] for c in cases]
        observations = _run(create_security_group, aws, arg_lists, "your create_security_group")
        groups = ec2_client(aws.endpoint_url).describe_security_groups()["SecurityGroups"]
        for case, args, obs in zip(cases, arg_lists, observations):
            _judge_security_group(case, args, obs, groups)


def _judge_security_group(case: dict, args: list, obs: dict, groups: list) -> None:
    name, my_ip, model_port = args
    call = _call_text("create_security_group", args)
    named = [g for g in groups if g.get("GroupName") == name]
    if case.get("rejects"):
        _expect_raise(obs, call, "ValueError", f"{my_ip!r} is not a single IPv4 address")
        if named:
            raise CheckFailed(f"{call} raised ValueError but still created the group; check the address before creating anything.")
        return
    group_id = _returned(obs, call)
    if not isinstance(group_id, str) or not group_id.startswith("sg-"):
        raise CheckFailed(f"{call} should return the new group's id (a string like 'sg-0123...'); it returned {group_id!r}.")
    group = next((g for g in groups if g["GroupId"] == group_id), None)
    if group is None:
        raise CheckFailed(f"{call} returned {group_id!r}, but there is no security group with that id.")
    if group.get("GroupName") != name:
        raise CheckFailed(f"the group should be named {name!r}; it is named {group.get('GroupName')!r}.")
    inbound = _rule_set(group.get("IpPermissions", []))
    ssh_from = sorted(r[3] for r in inbound if _opens(r, 22))
    if any(source in ("0.0.0.0/0", "::/0") for source in ssh_from):
        raise CheckFailed(
            f"SSH (tcp 22) is open to the whole internet ({', '.join(ssh_from)}); open it only to your own "
            f"address, {my_ip}/32. Bots scan port 22 around the clock."
        )
    want = {("tcp", 22, 22, f"{my_ip}/32"), ("tcp", model_port, model_port, "0.0.0.0/0")}
    missing, extra = want - inbound, inbound - want
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing: " + "; ".join(_describe_rule(r) for r in sorted(missing, key=str)))
        if extra:
            parts.append("not asked for: " + "; ".join(_describe_rule(r) for r in sorted(extra, key=str)))
        raise CheckFailed(
            f"the inbound rules of {name!r} should be exactly tcp 22 from {my_ip}/32 and tcp {model_port} "
            "from 0.0.0.0/0; " + ", ".join(parts) + "."
        )
    outbound = _rule_set(group.get("IpPermissionsEgress", []))
    for port, use in ((443, "HTTPS: git clone, pip install"), (80, "HTTP: apt-get")):
        if not any(r[3] == "0.0.0.0/0" and _opens(r, port) for r in outbound):
            raise CheckFailed(
                f"the outbound rules of {name!r} do not allow tcp {port} to 0.0.0.0/0 ({use}). That is what made "
                "`git clone` time out in the original course; keep the default allow-all outbound rule."
            )


def _instances(ec2) -> list[dict]:
    reservations = ec2.describe_instances()["Reservations"]
    return [i for r in reservations for i in r["Instances"] if i["State"]["Name"] != "terminated"]


def check_launch(launch_instance, cases: list) -> None:
    """``launch_instance(ec2, image_id, instance_type, key_name, group_id, tags)`` returns an id.

    Each case is ``{"instance_type", "tags"}`` (and optionally ``"image_id"``). Each call
    starts exactly one instance of that image and type, with that key pair and security
    group, tagged at launch (TagSpecifications), and returns its id.
    """
    with MotoServer() as aws:
        ec2 = ec2_client(aws.endpoint_url)
        arg_lists = []
        for i, case in enumerate(cases):
            key_name = f"servelab-key-{i}"
            ec2.create_key_pair(KeyName=key_name)
            group_id = ec2.create_security_group(GroupName=f"servelab-sg-{i}", Description="servelab check")["GroupId"]
            arg_lists.append([case.get("image_id", UBUNTU_AMI), case["instance_type"], key_name, group_id, dict(case["tags"])])
        observations = _run(launch_instance, aws, arg_lists, "your launch_instance")
        ids = [_returned(obs, _call_text("launch_instance", args)) for args, obs in zip(arg_lists, observations)]
        instances = {i["InstanceId"]: i for i in _instances(ec2)}
        if len(instances) != len(cases):
            raise CheckFailed(
                f"{len(cases)} calls of launch_instance left {len(instances)} instances running; each call should "
                "launch exactly one (MinCount=1, MaxCount=1). Every extra instance is billed."
            )
        for args, obs, instance_id in zip(arg_lists, observations, ids):
            _judge_instance(args, obs, instance_id, instances)


def _judge_instance(args: list, obs: dict, instance_id, instances: dict) -> None:
    image_id, instance_type, key_name, group_id, tags = args
    call = _call_text("launch_instance", args)
    inst = instances.get(instance_id) if isinstance(instance_id, str) else None
    if inst is None:
        raise CheckFailed(f"{call} should return the new instance's id (a string like 'i-0123...'); it returned {instance_id!r}.")
    for field, want in (("ImageId", image_id), ("InstanceType", instance_type), ("KeyName", key_name)):
        if inst.get(field) != want:
            raise CheckFailed(f"after {call}, the instance's {field} should be {want!r}; it is {inst.get(field)!r}.")
    groups = sorted(g["GroupId"] for g in inst.get("SecurityGroups", []))
    if groups != [group_id]:
        raise CheckFailed(f"after {call}, the instance should be in the security group {group_id!r} only; it is in {groups}.")
    have = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
    if any(have.get(k) != v for k, v in tags.items()):
        raise CheckFailed(f"after {call}, the instance should carry the tags {tags}; it has {have}.")
    runs = [c["params"] for c in obs["calls"] if c["op"] == "RunInstances"]
    at_launch = {
        t.get("Key"): t.get("Value")
        for p in runs[-1:]
        for spec in p.get("TagSpecifications", [])
        if spec.get("ResourceType") == "instance"
        for t in spec.get("Tags", [])
    }
    if any(at_launch.get(k) != v for k, v in tags.items()):
        raise CheckFailed(
            "tag the instance in run_instances itself (TagSpecifications with ResourceType 'instance'), not "
            "afterwards: an instance that starts untagged is one that cost reports and cleanup scripts can miss."
        )


def check_ssh_command(ssh_command, cases: list) -> None:
    """``ssh_command(ec2, instance_id, key_path[, user])`` returns ``ssh -i <key_path> <user>@<public DNS>``.

    Each case is ``{"key_path"}`` with an optional ``"user"`` (passed only when given; the
    default is "ubuntu") and ``"stopped": True`` (the instance is stopped, so it has no public
    DNS name: ValueError). The path must survive the shell (``shlex.quote``).
    """
    with MotoServer() as aws:
        ec2 = ec2_client(aws.endpoint_url)
        ec2.create_key_pair(KeyName="servelab-key")
        arg_lists = []
        for case in cases:
            instance_id = ec2.run_instances(
                ImageId=UBUNTU_AMI, MinCount=1, MaxCount=1, InstanceType="t3.medium", KeyName="servelab-key"
            )["Instances"][0]["InstanceId"]
            if case.get("stopped"):
                ec2.stop_instances(InstanceIds=[instance_id])
            arg_lists.append([instance_id, case["key_path"]] + ([case["user"]] if "user" in case else []))
        observations = _run(ssh_command, aws, arg_lists, "your ssh_command")
        dns = {i["InstanceId"]: i.get("PublicDnsName") for i in _instances(ec2)}
        for case, args, obs in zip(cases, arg_lists, observations):
            call = _call_text("ssh_command", args)
            if case.get("stopped"):
                _expect_raise(obs, call, "ValueError", "a stopped instance has no public DNS name")
                continue
            command = _returned(obs, call)
            want = ["ssh", "-i", case["key_path"], f"{case.get('user', 'ubuntu')}@{dns[args[0]]}"]
            if not isinstance(command, str):
                raise CheckFailed(f"{call} should return the command as a string; it returned {command!r}.")
            try:
                words = shlex.split(command)
            except ValueError as exc:
                raise CheckFailed(f"{call} returned {command!r}, which a shell cannot parse ({exc}).") from None
            if words != want:
                raise CheckFailed(
                    f"{call} should return {shlex.join(want)!r} (the public DNS name from describe_instances); "
                    f"it returned {command!r}, which a shell reads as {words}."
                )


if __name__ == "__main__":
    _serve(sys.argv[1])
