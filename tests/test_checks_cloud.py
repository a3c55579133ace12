"""The notebook-01 checks against a local moto server: right answers pass, each wrong one
fails with a message that names the mistake."""
from __future__ import annotations

import ipaddress
import os
import shlex
from pathlib import Path

import pytest

from autograder.checks import cloud
from autograder.errors import CheckFailed, NotAnswered
from autograder.isolate import run_isolated

KEY_CASES = [{"key_name": "servelab-key"}, {"key_name": "k2", "subdir": "keys/aws"}, {"key_name": "old", "existing": True}]
SG_CASES = [
    {"name": "servelab-sg", "my_ip": "203.0.113.10", "model_port": 8000},
    {"name": "other", "my_ip": "198.51.100.23", "model_port": 5000},
    {"name": "bad-cidr", "my_ip": "10.0.0.0/8", "model_port": 8000, "rejects": True},
    {"name": "bad-host", "my_ip": "my-laptop", "model_port": 8000, "rejects": True},
]
LAUNCH_CASES = [
    {"instance_type": "t3.medium", "tags": {"Name": "servelab-model", "Project": "servelab"}},
    {"instance_type": "t2.large", "tags": {"Name": "installer"}, "image_id": "ami-760aaa0f"},
]
SSH_CASES = [
    {"key_path": "servelab-key.pem"},
    {"key_path": "/home/me/my keys/k.pem", "user": "ec2-user"},
    {"key_path": "k.pem", "stopped": True},
]


# --- right answers ----------------------------------------------------------------------------

def save_key_pair(ec2, key_name, directory):
    path = Path(directory) / f"{key_name}.pem"
    if path.exists():
        raise FileExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    material = ec2.create_key_pair(KeyName=key_name)["KeyMaterial"]
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400), "w") as f:
        f.write(material)
    return path


def _rules(ip, port, ssh_cidr=None):
    return [
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": ssh_cidr or f"{ip}/32"}]},
        {"IpProtocol": "tcp", "FromPort": port, "ToPort": port, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
    ]


def create_security_group(ec2, name, my_ip, model_port):
    ipaddress.IPv4Address(my_ip)
    group_id = ec2.create_security_group(GroupName=name, Description="test")["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=_rules(my_ip, model_port))
    return group_id


def _tag_spec(tags):
    return [{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]


def launch_instance(ec2, image_id, instance_type, key_name, group_id, tags):
    return ec2.run_instances(
        ImageId=image_id, InstanceType=instance_type, KeyName=key_name, SecurityGroupIds=[group_id],
        MinCount=1, MaxCount=1, TagSpecifications=_tag_spec(tags),
    )["Instances"][0]["InstanceId"]


def _instance(ec2, instance_id):
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def ssh_command(ec2, instance_id, key_path, user="ubuntu"):
    dns = _instance(ec2, instance_id).get("PublicDnsName")
    if not dns:
        raise ValueError(f"{instance_id} has no public DNS name")
    return f"ssh -i {shlex.quote(str(key_path))} {user}@{dns}"


# --- wrong answers ----------------------------------------------------------------------------

def key_world_readable(ec2, key_name, directory):
    path = Path(directory) / f"{key_name}.pem"
    if path.exists():
        raise FileExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(ec2.create_key_pair(KeyName=key_name)["KeyMaterial"])
    os.chmod(path, 0o644)
    return path


def key_overwrites(ec2, key_name, directory):
    path = Path(directory) / f"{key_name}.pem"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        os.chmod(path, 0o600)
    path.write_text(ec2.create_key_pair(KeyName=key_name)["KeyMaterial"])
    os.chmod(path, 0o400)
    return path


def key_checks_too_late(ec2, key_name, directory):
    material = ec2.create_key_pair(KeyName=key_name)["KeyMaterial"]
    path = Path(directory) / f"{key_name}.pem"
    if path.exists():
        raise FileExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(material)
    os.chmod(path, 0o400)
    return path


def key_saves_fingerprint(ec2, key_name, directory):
    path = Path(directory) / f"{key_name}.pem"
    if path.exists():
        raise FileExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(ec2.create_key_pair(KeyName=key_name)["KeyFingerprint"])
    os.chmod(path, 0o400)
    return path


def unanswered(ec2, *args):
    raise NotImplementedError()


def sg_ssh_open_to_world(ec2, name, my_ip, model_port):
    ipaddress.IPv4Address(my_ip)
    group_id = ec2.create_security_group(GroupName=name, Description="test")["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=_rules(my_ip, model_port, "0.0.0.0/0"))
    return group_id


def sg_extra_http(ec2, name, my_ip, model_port):
    group_id = create_security_group(ec2, name, my_ip, model_port)
    ec2.authorize_security_group_ingress(GroupId=group_id, IpProtocol="tcp", FromPort=80, ToPort=80, CidrIp="0.0.0.0/0")
    return group_id


def sg_outbound_ssh_only(ec2, name, my_ip, model_port):
    group_id = create_security_group(ec2, name, my_ip, model_port)
    ec2.revoke_security_group_egress(
        GroupId=group_id, IpPermissions=[{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]
    )
    ec2.authorize_security_group_egress(
        GroupId=group_id,
        IpPermissions=[{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}],
    )
    return group_id


def sg_validates_too_late(ec2, name, my_ip, model_port):
    group_id = ec2.create_security_group(GroupName=name, Description="test")["GroupId"]
    ipaddress.IPv4Address(my_ip)
    ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=_rules(my_ip, model_port))
    return group_id


def launch_two(ec2, image_id, instance_type, key_name, group_id, tags):
    return ec2.run_instances(
        ImageId=image_id, InstanceType=instance_type, KeyName=key_name, SecurityGroupIds=[group_id],
        MinCount=2, MaxCount=2, TagSpecifications=_tag_spec(tags),
    )["Instances"][0]["InstanceId"]


def launch_then_tag(ec2, image_id, instance_type, key_name, group_id, tags):
    instance_id = ec2.run_instances(
        ImageId=image_id, InstanceType=instance_type, KeyName=key_name, SecurityGroupIds=[group_id],
        MinCount=1, MaxCount=1,
    )["Instances"][0]["InstanceId"]
    ec2.create_tags(Resources=[instance_id], Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
    return instance_id


def launch_micro(ec2, image_id, instance_type, key_name, group_id, tags):
    return launch_instance(ec2, image_id, "t2.micro", key_name, group_id, tags)


def ssh_unquoted(ec2, instance_id, key_path, user="ubuntu"):
    dns = _instance(ec2, instance_id).get("PublicDnsName")
    if not dns:
        raise ValueError("no public DNS name")
    return f"ssh -i {key_path} {user}@{dns}"


def ssh_private_dns(ec2, instance_id, key_path, user="ubuntu"):
    inst = _instance(ec2, instance_id)
    if not inst.get("PublicDnsName"):
        raise ValueError("no public DNS name")
    return f"ssh -i {shlex.quote(key_path)} {user}@{inst['PrivateDnsName']}"


def ssh_no_check(ec2, instance_id, key_path, user="ubuntu"):
    return f"ssh -i {shlex.quote(key_path)} {user}@{_instance(ec2, instance_id).get('PublicDnsName') or ''}"


# --- tests ------------------------------------------------------------------------------------

def test_right_answers_pass():
    cloud.check_key_pair(save_key_pair, KEY_CASES)
    cloud.check_security_group(create_security_group, SG_CASES)
    cloud.check_launch(launch_instance, LAUNCH_CASES)
    cloud.check_ssh_command(ssh_command, SSH_CASES)


@pytest.mark.parametrize("impl, cases, message", [
    (key_world_readable, KEY_CASES[:1], "mode is 0644; expected 0400"),
    (key_overwrites, KEY_CASES[2:], "should raise FileExistsError"),
    (key_checks_too_late, KEY_CASES[2:], "only after creating the key pair"),
    (key_saves_fingerprint, KEY_CASES[:1], "exactly as AWS returned it"),
])
def test_wrong_key_pairs_fail(impl, cases, message):
    with pytest.raises(CheckFailed, match=message):
        cloud.check_key_pair(impl, cases)


@pytest.mark.parametrize("impl, cases, message", [
    (sg_ssh_open_to_world, SG_CASES[:1], "open to the whole internet"),
    (sg_extra_http, SG_CASES[:1], r"not asked for: tcp 80 from 0\.0\.0\.0/0"),
    (sg_outbound_ssh_only, SG_CASES[:1], "do not allow tcp 443"),
    (sg_validates_too_late, SG_CASES[2:3], "still created the group"),
])
def test_wrong_security_groups_fail(impl, cases, message):
    with pytest.raises(CheckFailed, match=message):
        cloud.check_security_group(impl, cases)


@pytest.mark.parametrize("impl, message", [
    (launch_two, "left 2 instances"),
    (launch_then_tag, "TagSpecifications"),
    (launch_micro, "InstanceType should be 't3.medium'; it is 't2.micro'"),
])
def test_wrong_launches_fail(impl, message):
    with pytest.raises(CheckFailed, match=message):
        cloud.check_launch(impl, LAUNCH_CASES[:1])


@pytest.mark.parametrize("impl, cases, message", [
    (ssh_unquoted, SSH_CASES[1:2], "which a shell reads as"),
    (ssh_private_dns, SSH_CASES[:1], "the public DNS name"),
    (ssh_no_check, SSH_CASES[2:], "should raise ValueError"),
])
def test_wrong_ssh_commands_fail(impl, cases, message):
    with pytest.raises(CheckFailed, match=message):
        cloud.check_ssh_command(impl, cases)


def test_a_blank_answer_is_not_answered():
    with pytest.raises(NotAnswered, match="NotImplementedError"):
        cloud.check_security_group(unanswered, SG_CASES[:1])


def test_moto_server_is_on_loopback_and_stops():
    with cloud.MotoServer() as aws:
        assert aws.endpoint_url.startswith("http://127.0.0.1:")
        pid = aws._proc.pid
        names = cloud.ec2_client(aws.endpoint_url).describe_key_pairs()["KeyPairs"]
        assert names == []
    assert aws.endpoint_url is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_clients_refuse_endpoints_off_this_machine():
    with pytest.raises(ValueError, match="not on this machine"):
        cloud.ec2_client("https://ec2.us-east-1.amazonaws.com")


def _client_endpoint():
    import boto3

    return boto3.client("ec2").meta.endpoint_url


def test_student_processes_send_every_aws_client_to_moto():
    with cloud.MotoServer() as aws:
        observations = run_isolated(cloud._call_each, lambda ec2: _client_endpoint(), aws.endpoint_url, [[]])
        assert observations[0]["value"] == aws.endpoint_url
