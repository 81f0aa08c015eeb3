"""Real servers for the HTTP client's integration tests: Debian packages installed when missing,
a certificate authority made per test module, nginx and tinyproxy run in folders of their own
on 127.0.0.1 ports, stopped after."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest


def installed(binary: str, package: str) -> str:
    """The path of ``binary``, installing Debian's ``package`` with apt when it is missing;
    the test is skipped only where apt cannot be used."""
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None:
        pytest.skip(f"{binary} is not installed and apt-get is not available to install "
                    f"{package}")
    if os.geteuid() != 0:
        pytest.skip(f"{binary} is not installed and apt-get needs root to install {package}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "-q", "--no-install-recommends", package]
    if subprocess.run(install, env=env, capture_output=True, timeout=300).returncode != 0:
        # The package lists may be missing or stale (a fresh container): refresh once.
        subprocess.run([apt, "update", "-q"], env=env, capture_output=True, timeout=300,
                       check=True)
        subprocess.run(install, env=env, capture_output=True, timeout=300, check=True)
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/bin")
    assert found, f"apt installed {package} but {binary} is not on the PATH"
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes], log: Path,
                   timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode}: {_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"not listening on {port} after {timeout:g}s: {_tail(log)}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"


@dataclass(frozen=True)
class Authority:
    """A CA no system trusts, and a certificate it signed for ``localhost`` and 127.0.0.1."""

    ca: Path  # what SSL_CERT_FILE names
    cert: Path
    key: Path


def make_authority(folder: Path) -> Authority:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca = folder / "ca.key", folder / "ca.pem"
    key, csr, cert = folder / "server.key", folder / "server.csr", folder / "server.pem"
    ext = folder / "server.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                   "basicConstraints=critical,CA:FALSE\n"
                   "keyUsage=critical,digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=serverAuth\n")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-days", "2", "-subj", "/CN=botrelay test CA", "-keyout", str(ca_key), "-out", str(ca),
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(csr))
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert))
    return Authority(ca, cert, key)


# keepalive_requests 3 and keepalive_timeout 1s: connections end often, by count and by idling,
# as in front of many real APIs. Each framing has its own location; the fake reply API's port is
# the first path segment, so one nginx serves every test's fake.
_NGINX = """
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 3;
    keepalive_timeout 1s;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Accept-Encoding "";
    sub_filter_types application/json;
    sub_filter_once on;

    server {{
        listen 127.0.0.1:{http1} ssl;
        {locations}
    }}
    server {{
        listen 127.0.0.1:{http2} ssl http2;
        {locations}
    }}
}}
"""

_LOCATIONS = """
        # Content-Length: the fake's answer passed on as it is.
        location ~ ^/(\\d+)/length/(.*)$ {
            proxy_pass http://127.0.0.1:$1/$2$is_args$args;
        }
        # chunked: sub_filter may change the length, so nginx cannot send one.
        location ~ ^/(\\d+)/chunked/(.*)$ {
            sub_filter '"data"' '"data"';
            proxy_pass http://127.0.0.1:$1/$2$is_args$args;
        }
        # close-delimited: no length and no chunks; the answer ends when the connection does.
        location ~ ^/(\\d+)/close/(.*)$ {
            chunked_transfer_encoding off;
            sub_filter '"data"' '"data"';
            proxy_pass http://127.0.0.1:$1/$2$is_args$args;
        }
"""

FRAMINGS = ("length", "chunked", "close")


class Nginx:
    """nginx with TLS from ``authority``: HTTP/1.1 only on ``http1_port``, HTTP/2 offered on
    ``http2_port``; ``base(port, framing, fake_port)`` is a reply API base through it."""

    def __init__(self, folder: Path, authority: Authority) -> None:
        self.binary = installed("nginx", "nginx-light")
        self.folder = folder
        self.authority = authority
        self.http1_port, self.http2_port = free_port(), free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Nginx:
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / "nginx.conf"
        conf.write_text(_NGINX.format(prefix=self.folder, cert=self.authority.cert,
                                      key=self.authority.key, http1=self.http1_port,
                                      http2=self.http2_port, locations=_LOCATIONS))
        log = self.folder / "error.log"
        self.process = subprocess.Popen(
            [self.binary, "-p", str(self.folder), "-c", str(conf), "-e", str(log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.http1_port, self.process, log)
        wait_listening(self.http2_port, self.process, log)
        return self

    def base(self, port: int, framing: str, fake_port: int) -> str:
        return f"https://localhost:{port}/{fake_port}/{framing}/{{appId}}/v3"

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)


_TINYPROXY = """
Port {port}
Listen 127.0.0.1
Timeout 30
LogFile "{folder}/tinyproxy.log"
LogLevel Info
PidFile "{folder}/tinyproxy.pid"
MaxClients 64
Allow 127.0.0.1
{connect_ports}
"""


class Tinyproxy:
    """Debian's tinyproxy as an egress proxy on 127.0.0.1; CONNECT allowed to ``connect_ports``
    only (as tinyproxy's default allows 443 only). ``log()`` is what it has logged so far."""

    def __init__(self, folder: Path, connect_ports: tuple[int, ...]) -> None:
        self.binary = installed("tinyproxy", "tinyproxy")
        self.folder = folder
        self.connect_ports = connect_ports
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Tinyproxy:
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / "tinyproxy.conf"
        conf.write_text(_TINYPROXY.format(
            port=self.port, folder=self.folder,
            connect_ports="\n".join(f"ConnectPort {p}" for p in self.connect_ports)))
        self.process = subprocess.Popen([self.binary, "-d", "-c", str(conf)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.port, self.process, self.folder / "tinyproxy.log")
        return self

    def log(self) -> str:
        path = self.folder / "tinyproxy.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
