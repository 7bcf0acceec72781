#!/usr/bin/env python3
"""Runs an installed systemd socket unit with Accept=yes the way systemd does, without systemd (CI containers have
no init system): socket-unit.py SOCKET_UNIT SERVICE_TEMPLATE_UNIT.

From the .socket unit: ListenStream (a unix socket path), SocketUser, SocketGroup, SocketMode, DirectoryMode,
Accept=yes. From the @.service unit: User, Group, Environment, EnvironmentFile, StandardInput/StandardOutput=socket,
ExecStart. The socket is created with that owner, group and mode; every connection gets a child that takes the
service's user, group and supplementary groups, a clean environment (PATH, HOME, USER, LOGNAME, SHELL from the
passwd entry, then Environment= and EnvironmentFile=), the connection as stdin and stdout, and execs ExecStart.
Prints "READY" once listening; SIGTERM stops it. Only what p11bridge's units use is understood; anything else in
them is an error, so the emulation cannot silently drift from the units."""

import grp
import os
import pwd
import shlex
import signal
import socket
import sys


def parse_unit(path):
    sections, cur = {}, None
    with open(path) as f:
        for raw in f:
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("[") and line.endswith("]"):
                cur = sections.setdefault(line[1:-1], [])
                continue
            key, _, value = line.partition("=")
            cur.append((key.strip(), value.strip()))
    return sections


def env_assignments(value):
    out = {}
    for word in shlex.split(value):
        k, _, v = word.partition("=")
        out[k] = v
    return out


def main():
    sock_unit, svc_unit = sys.argv[1], sys.argv[2]
    s = parse_unit(sock_unit)
    sock = dict(s["Socket"])
    known = {"ListenStream", "SocketUser", "SocketGroup", "SocketMode", "DirectoryMode", "Accept"}
    unknown = set(sock) - known
    if unknown:
        sys.exit(f"socket-unit.py: {sock_unit}: not emulated: {sorted(unknown)}")
    if sock.get("Accept") != "yes":
        sys.exit("socket-unit.py: only Accept=yes is emulated")
    path = sock["ListenStream"]

    svc = parse_unit(svc_unit)["Service"]
    user = group = None
    env = {}
    env_files = []
    exec_start = None
    ignored = {  # systemd sandboxing and bookkeeping: not emulated (they only restrict the service further)
        "Type", "StandardError", "NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp",
        "ProtectKernelTunables", "ProtectControlGroups", "RestrictSUIDSGID", "PrivateDevices", "ReadWritePaths",
    }
    for k, v in svc:
        if k == "User":
            user = v
        elif k == "Group":
            group = v
        elif k == "Environment":
            env.update(env_assignments(v))
        elif k == "EnvironmentFile":
            env_files.append(v)
        elif k in ("StandardInput", "StandardOutput"):
            if v != "socket":
                sys.exit(f"socket-unit.py: {k}={v} not emulated")
        elif k == "ExecStart":
            exec_start = shlex.split(v)
        elif k not in ignored:
            sys.exit(f"socket-unit.py: {svc_unit}: {k}= not emulated")

    pw = pwd.getpwnam(user)
    gid = grp.getgrnam(group).gr_gid if group else pw.pw_gid
    base_env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": pw.pw_dir,
        "USER": user,
        "LOGNAME": user,
        "SHELL": pw.pw_shell,
    }
    base_env.update(env)
    for ef in env_files:
        optional = ef.startswith("-")
        ef = ef.lstrip("-")
        try:
            with open(ef) as f:
                for line in f:
                    line = line.strip()
                    if line and not line.startswith("#") and "=" in line:
                        k, _, v = line.partition("=")
                        base_env[k.strip()] = v.strip().strip('"')
        except FileNotFoundError:
            if not optional:
                sys.exit(f"socket-unit.py: EnvironmentFile {ef} missing")

    os.makedirs(os.path.dirname(path), mode=int(sock.get("DirectoryMode", "0755"), 8), exist_ok=True)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ls.bind(path)
    os.chown(
        path,
        pwd.getpwnam(sock["SocketUser"]).pw_uid if "SocketUser" in sock else 0,
        grp.getgrnam(sock["SocketGroup"]).gr_gid if "SocketGroup" in sock else 0,
    )
    os.chmod(path, int(sock.get("SocketMode", "0666"), 8))
    ls.listen(64)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("READY", flush=True)
    while True:
        conn, _ = ls.accept()
        pid = os.fork()
        if pid == 0:
            try:
                ls.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.initgroups(user, gid)
                os.setgid(gid)
                os.setuid(pw.pw_uid)
                os.chdir("/")
                os.dup2(conn.fileno(), 0)
                os.dup2(conn.fileno(), 1)
                conn.close()
                os.execve(exec_start[0], exec_start, base_env)
            finally:
                os._exit(127)
        conn.close()


if __name__ == "__main__":
    main()
