"""
The backend every peer sits in front of, and the files it serves: Debian's
nginx with one worker and its own prefix in the run's temporary directory
(not the system service), or, when nginx is missing, the slower Python
fallback in ``peers/python_backend.py``.

It serves ``/small`` (a ~100-byte 200), ``/big`` (a sparse file of the
transfer size) and ``/upload`` (reads the whole body, whatever its size,
before answering 200, so that an upload's time is the time to deliver every
byte to the backend).
"""

from __future__ import annotations

import os
import pwd
import grp
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Sequence

from _procs import ProcessSet, Started, free_port, wait_listening

TEMPLATES = Path(__file__).resolve().parent / "templates"
PEERS = Path(__file__).resolve().parent / "peers"
NGINX = "/usr/sbin/nginx"
ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")
SMALL_BODY = "edd-gateway bench: a small response of about one hundred bytes, served by the backend.......\n"


@dataclass
class Backend:
    kind: str
    port: int
    started: Started
    big_path: Path
    upload_path: Path
    notes: list[str] = field(default_factory=list)


def nginx_path() -> str | None:
    return NGINX if os.access(NGINX, os.X_OK) else shutil.which("nginx")


def nginx_user_line() -> str:
    """Keep nginx's workers under our own user when run as root, so they can read the run's private directory."""
    if os.geteuid() != 0:
        return ""
    return f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"


def render(template: str, destination: Path, **values: object) -> Path:
    text = Template((TEMPLATES / template).read_text()).substitute({k: str(v) for k, v in values.items()})
    destination.write_text(text)
    return destination


def make_sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as sparse:
        sparse.truncate(size)
    return path


def start_backend(
    procs: ProcessSet, workdir: Path, kind: str, size: int, cpus: Sequence[int] | None
) -> Backend:
    """Start the backend (C{kind} is auto, nginx or python) and return once it listens."""
    docroot = workdir / "www"
    docroot.mkdir()
    big_path = make_sparse(docroot / "big", size)
    upload_path = make_sparse(workdir / "upload.bin", size)
    nginx = nginx_path()
    if kind == "nginx" and nginx is None:
        raise SystemExit("--backend nginx: nginx is not installed")
    port = free_port()
    if kind != "python" and nginx is not None:
        backend = _start_nginx(procs, workdir, nginx, docroot, port, cpus)
    else:
        argv = [sys.executable, str(PEERS / "python_backend.py"), str(port), str(big_path), SMALL_BODY]
        started = procs.start("backend-python", argv, cpus=cpus, cwd=workdir)
        backend = Backend("python", port, started, big_path, upload_path)
        backend.notes.append(
            "Python fallback backend: much slower than nginx, so every proxy looks closer to direct and ratios shrink."
        )
    backend.big_path, backend.upload_path = big_path, upload_path
    wait_listening(backend.started, port)
    return backend


def _start_nginx(
    procs: ProcessSet, workdir: Path, nginx: str, docroot: Path, port: int, cpus: Sequence[int] | None
) -> Backend:
    notes: list[str] = []
    if ECHO_MODULE.exists():
        echo_module_line = f"load_module {ECHO_MODULE};"
        # echo_read_request_body reads the whole body before the answer; the
        # big buffer keeps it in memory instead of a temporary file on disk.
        upload_directives = 'client_body_buffer_size 512m; echo_read_request_body; echo "ok";'
    else:
        echo_module_line = ""
        upload_directives = 'default_type text/plain; return 200 "ok\\n";'
        notes.append(
            "nginx echo module missing: /upload answers before the body is read, so upload figures "
            "measure how fast each proxy discards, not end-to-end delivery."
        )
    config = render(
        "nginx-backend.conf",
        workdir / "nginx-backend.conf",
        workdir=workdir,
        docroot=docroot,
        port=port,
        small_body=SMALL_BODY.replace("\n", "\\n"),
        user_line=nginx_user_line(),
        echo_module_line=echo_module_line,
        upload_directives=upload_directives,
    )
    argv = [nginx, "-p", str(workdir), "-c", str(config), "-e", str(workdir / "nginx-backend.error.log")]
    started = procs.start("backend-nginx", argv, cpus=cpus, cwd=workdir)
    return Backend("nginx", port, started, docroot / "big", workdir / "upload.bin", notes)
