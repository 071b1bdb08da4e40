# Copyright: PRNG cluster team
# MIT License (see galaxy.yml)
"""One long-lived process on a host, over the task's own connection: the argv that runs
`remote` there through the inventory's user, key, port, ssh args and ControlPersist socket
(the fan-out's agent, the ramdisk's receiver). Only the `ssh` and `local` connections."""

from __future__ import annotations

import os
import shlex
from typing import Any, List, Tuple


def session_command(conn: Any, remote: List[str]) -> Tuple[List[str], Tuple[int, ...]]:
    """(argv, fds the child must keep) that run `remote` on the connection's host: as is on
    the local connection, through ssh built the way Ansible's ssh plugin builds it on ssh
    (a password login hands sshpass its pipe, as Ansible does). ValueError otherwise."""
    if conn.transport == "local":
        return list(remote), ()
    if conn.transport != "ssh":
        raise ValueError(f"connection {conn.transport!r} is not supported here (ssh or local)")
    conn.host = conn.get_option("host") or conn._play_context.remote_addr
    argv = conn._build_command(conn.get_option("ssh_executable"), "ssh", conn.host, shlex.join(remote))
    pipe, conn.sshpass_pipe = conn.sshpass_pipe, None
    if pipe:
        password = conn.get_option("password") or conn._play_context.password
        os.write(pipe[1], str(password).encode() + b"\n")
        os.close(pipe[1])
        return argv, (pipe[0],)
    return argv, ()
