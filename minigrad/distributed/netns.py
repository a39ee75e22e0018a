"""A loopback-only network namespace for everything that starts Ray locally.

Ray binds to every interface by default and one of its processes probes a cloud-metadata
address even with usage statistics off. Binding it to 127.0.0.1 is necessary but not
sufficient, so a local cluster is only ever started inside a fresh network namespace that
has nothing but ``lo``: there no packet can leave the machine whatever Ray tries.

* :func:`only_loopback` tells whether the calling process already lives in such a
  namespace (``socket.if_nameindex``: ``/sys/class/net`` shows the namespace of whoever
  mounted sysfs, not ours);
* :func:`loopback_command` prefixes a command so that it runs in a new one
  (``unshare -n`` as root, ``unshare -rn`` with an unprivileged user namespace);
  the child brings ``lo`` up itself (:func:`bring_loopback_up`, one ioctl, no ``ip``);
* :func:`namespace_inode` / :func:`processes_in_namespace` find every process in a
  namespace (so the caller can end what it started there, and nothing else);
* :func:`non_loopback_listeners` reads ``/proc/net/tcp{,6}`` and ``udp{,6}`` for sockets
  bound to anything but loopback (the network-safety check at teardown).
"""
from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def interfaces():
    """Names of the network interfaces of the calling process's namespace."""
    return sorted(name for _, name in socket.if_nameindex())


def only_loopback():
    """True when this process's network namespace has no interface but ``lo``."""
    return interfaces() == ["lo"]


def bring_loopback_up():
    """Set ``lo`` up in the current namespace (a fresh namespace starts with it down)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req))[1]
        if not flags & IFF_UP:
            fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | IFF_UP))


def loopback_command(argv):
    """``argv`` prefixed to run in a new loopback-only network namespace, or ``None``.

    Tries ``unshare -n`` (root) then ``unshare -rn`` (user namespace); returns ``None``
    when neither is possible here (no ``unshare``, no permission).
    """
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    for flags in (["-n"], ["-r", "-n"]):
        probe = [unshare, *flags, sys.executable, "-c", PROBE]
        try:
            out = subprocess.run(probe, capture_output=True, timeout=30, text=True)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip() == "lo":
            return [unshare, *flags, *argv]
    return None


PROBE = ("import socket; print(','.join(sorted(n for _, n in socket.if_nameindex())))")


def namespace_inode(pid="self"):
    """The inode that identifies the network namespace of process ``pid``."""
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def processes_in_namespace(inode, exclude=()):
    """PIDs of every process whose network namespace is ``inode`` (except ``exclude``)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in exclude:
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                pids.append(int(entry))
        except OSError:  # gone meanwhile, or not ours to inspect
            continue
    return pids


def kill_namespace(inode, exclude=(), timeout_s=5.0):
    """SIGKILL every process in namespace ``inode`` (processes we started there) and wait.

    Returns the PIDs that were still alive and got killed.
    """
    victims = processes_in_namespace(inode, exclude)
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and processes_in_namespace(inode, exclude):
        time.sleep(0.05)
    return victims


def _proc_net_sockets(kind):
    """``(local address, port, state)`` rows of ``/proc/net/<kind>`` for this namespace."""
    rows = []
    try:
        with open(f"/proc/net/{kind}") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return rows
    for line in lines:
        fields = line.split()
        addr_hex, port_hex = fields[1].split(":")
        raw = bytes.fromhex(addr_hex)
        if len(raw) == 4:
            addr = socket.inet_ntop(socket.AF_INET, raw[::-1])
        else:  # four little-endian 32-bit words
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
            addr = socket.inet_ntop(socket.AF_INET6, words)
        rows.append((addr, int(port_hex, 16), fields[3]))
    return rows


TCP_LISTEN, UDP_UNCONNECTED = "0A", "07"


def listening_sockets():
    """Every TCP listener and bound UDP socket in this namespace: ``(proto, addr, port)``."""
    found = []
    for kind, state in (("tcp", TCP_LISTEN), ("tcp6", TCP_LISTEN), ("udp", UDP_UNCONNECTED),
                        ("udp6", UDP_UNCONNECTED)):
        found += [(kind, a, p) for a, p, s in _proc_net_sockets(kind) if s == state]
    return found


def is_loopback_address(addr):
    return addr == "::1" or addr.startswith("127.") or addr.startswith("::ffff:127.")


def non_loopback_listeners():
    """Listening/bound sockets whose address is not loopback (should be empty)."""
    return [s for s in listening_sockets() if not is_loopback_address(s[1])]
