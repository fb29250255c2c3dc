"""Pure pieces of the Swarm runtime: the service spec it sends, and how it
reads tasks and nodes back (the lab tests in test_cluster.py drive the real
thing)."""

from __future__ import annotations

import pytest

from herder.errors import SettingsError
from herder.runtime.base import ServiceSpec
from herder.runtime.swarm import _info_from, _node_from, _service_spec, _state_of, _swarm_host
from herder.settings import Settings


def test_a_daemon_spec_becomes_one_task_with_limits_ports_and_placement() -> None:
    spec = ServiceSpec(
        name="web-j1",
        image="img:1",
        labels={"herder.managed": "1", "herder.name": "web"},
        ports=(80, 443),
        volume="vol",
        mounts=("/web", "/minion"),
        env={"A": "1"},
        memory_bytes=64 << 20,
        nano_cpus=500_000_000,
        pids=99,
        network="herder",
        node="n2",
        gpus=2,
        extra_hosts=("db:10.0.0.5", "host.docker.internal:host-gateway"),
    )
    configs = [{"id": "c1", "name": "web-j1-f0", "file": "index.html"}]
    body = _service_spec(spec, configs)
    assert body["Mode"] == {"Replicated": {"Replicas": 1}}
    assert body["EndpointSpec"] == {
        "Mode": "dnsrr",
        "Ports": [
            {"Protocol": "tcp", "TargetPort": 80, "PublishMode": "host"},
            {"Protocol": "tcp", "TargetPort": 443, "PublishMode": "host"},
        ],
    }
    task = body["TaskTemplate"]
    container = task["ContainerSpec"]
    assert container["OpenStdin"] is True and container["Init"] is True
    assert container["Labels"] == spec.labels and body["Labels"] == spec.labels
    assert container["Env"] == ["A=1"]
    assert [m["Target"] for m in container["Mounts"]] == ["/web", "/minion"]
    assert {m["Source"] for m in container["Mounts"]} == {"vol"}
    assert container["Configs"][0]["File"]["Name"] == "/minion/index.html"
    assert container["Hosts"] == ["10.0.0.5 db"]  # host-gateway means nothing on a Swarm
    assert task["Resources"]["Limits"] == {
        "NanoCPUs": 500_000_000,
        "MemoryBytes": 64 << 20,
        "Pids": 99,
    }
    assert task["Resources"]["Reservations"]["GenericResources"] == [
        {"DiscreteResourceSpec": {"Kind": "gpu", "Value": 2}}
    ]
    assert task["Placement"] == {"Constraints": ["node.id==n2"]}
    assert task["Networks"] == [{"Target": "herder"}]
    assert task["RestartPolicy"]["Condition"] == "any"


def test_a_task_reads_back_as_a_container_with_its_node() -> None:
    node = _node_from(
        {
            "ID": "n1",
            "Description": {
                "Hostname": "box1",
                "Resources": {
                    "NanoCPUs": 4_000_000_000,
                    "MemoryBytes": 8 << 30,
                    "GenericResources": [
                        {"DiscreteResourceSpec": {"Kind": "gpu", "Value": 2}},
                        {"NamedResourceSpec": {"Kind": "GPU", "Value": "uuid-1"}},
                    ],
                },
            },
            "Spec": {"Role": "manager", "Availability": "drain"},
            "Status": {"State": "ready", "Addr": "10.1.0.1"},
            "ManagerStatus": {"Leader": True, "Addr": "10.1.0.1:2377"},
        }
    )
    assert (node.hostname, node.address, node.cpus, node.gpus) == ("box1", "10.1.0.1", 4.0, 3)
    assert (node.role, node.availability, node.leader) == ("manager", "drain", True)
    service = {
        "ID": "s1",
        "CreatedAt": "2026-01-01T00:00:00.5Z",
        "Spec": {
            "Name": "web-j1",
            "Labels": {"herder.name": "web"},
            "TaskTemplate": {"ContainerSpec": {"Image": "img:1"}},
        },
    }
    task = {
        "ID": "t1",
        "NodeID": "n1",
        "DesiredState": "running",
        "Status": {
            "State": "running",
            "PortStatus": {
                "Ports": [
                    {"TargetPort": 80, "PublishedPort": 30001, "PublishMode": "host"},
                    {"TargetPort": 80, "PublishedPort": 30001, "PublishMode": "host"},
                ]
            },
        },
        "NetworksAttachments": [
            {"Network": {"Spec": {"Name": "herder"}}, "Addresses": ["10.253.1.7/24"]}
        ],
    }
    info = _info_from(service, task, {"n1": node})
    assert (info.id, info.name, info.state, info.image) == ("s1", "web-j1", "running", "img:1")
    assert info.ports == {"80": 30001} and info.address == "10.253.1.7"
    assert info.node is not None and info.node.reference() == {
        "ID": "n1",
        "Hostname": "box1",
        "Address": "10.1.0.1",
    }
    pending = _info_from(service, None, {"n1": node})
    assert (pending.state, pending.ports, pending.address, pending.node) == (
        "created",
        {},
        "",
        None,
    )
    assert _state_of({"Status": {"State": "failed"}}) == "exited"
    assert _state_of({"Status": {"State": "preparing"}}) == "created"


def test_extra_hosts_and_the_runtime_setting() -> None:
    assert _swarm_host("a:1.2.3.4") == "1.2.3.4 a"
    assert _swarm_host("a:host-gateway") == ""
    assert Settings.load({}, environ={"HERDER_RUNTIME": "swarm"}, check_data_dir=False).runtime == (
        "swarm"
    )
    assert Settings.load({}, environ={}, check_data_dir=False).runtime == "docker"
    with pytest.raises(SettingsError, match="HERDER_RUNTIME"):
        Settings.load({}, environ={"HERDER_RUNTIME": "k8s"}, check_data_dir=False)


def test_task_changes_read_as_container_events() -> None:
    from herder.runtime.swarm import _transitions

    assert _transitions(("t1", "created"), ("t1", "running")) == ["start"]
    assert _transitions(("t1", "running"), ("t1", "exited")) == ["die"]
    # Rescheduled: the old task's run ends, the new one's begins.
    assert _transitions(("t1", "running"), ("t2", "created")) == ["die"]
    assert _transitions(("t1", "running"), ("t2", "running")) == ["die", "start"]
    assert _transitions(("t2", "created"), ("t2", "created")) == []
    assert _transitions(None, ("t1", "running")) == ["start"]


def test_a_port_asked_for_on_loopback_is_not_published_on_the_node() -> None:
    """A golem's DevTools is bound to 127.0.0.1 on one engine; a Swarm has
    no bind address for published ports, so it is not published at all."""
    spec = ServiceSpec(
        name="golem-w-i", image="img:1", labels={}, ports=(9222,), bind_address="127.0.0.1"
    )
    assert _service_spec(spec, [])["EndpointSpec"]["Ports"] == []
    spec = ServiceSpec(name="web-j", image="img:1", labels={}, ports=(80,), bind_address="0.0.0.0")
    assert _service_spec(spec, [])["EndpointSpec"]["Ports"] == [
        {"Protocol": "tcp", "TargetPort": 80, "PublishMode": "host"}
    ]
