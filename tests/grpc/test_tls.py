"""TLS on both ports (``--ssl-certfile/--ssl-keyfile``) with a self-signed certificate made here, and the
start-up refusals of the gRPC settings."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from inferlane.testing import LOOPBACK, free_port
from tests.grpc.conftest import serve_grpc

pytestmark = pytest.mark.e2e


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, valid for a day, and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "inferlane test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address(LOOPBACK))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    certfile, keyfile = folder / "cert.pem", folder / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return certfile, keyfile


def test_tls_on_http_and_grpc(grpc_repo: Path, tmp_path: Path) -> None:
    certfile, keyfile = self_signed(tmp_path)
    trusted = ssl.create_default_context(cafile=str(certfile))

    def ready(port: int) -> bool:
        try:
            return httpx.get(f"https://{LOOPBACK}:{port}/v2/health/ready", verify=trusted, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    extra = ["--ssl-certfile", str(certfile), "--ssl-keyfile", str(keyfile)]
    with serve_grpc(grpc_repo, tmp_path / "server.log", extra=extra, ready=ready) as served:
        c = tg.InferenceServerClient(served.grpc_url, ssl=True, root_certificates=str(certfile))
        assert c.is_server_ready()
        x = np.ones((1, 4), np.float32)
        inp = tg.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(x)
        assert c.infer("slow", [inp]).as_numpy("y").tolist() == [[2.0] * 4]
        c.close()
        with grpc.insecure_channel(served.grpc_url) as plain:  # plaintext to the TLS port gets nowhere
            with pytest.raises(grpc.RpcError) as failed:
                plain.unary_unary("/inference.GRPCInferenceService/ServerLive")(b"", timeout=5)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(httpx.HTTPError):  # nor does an untrusted certificate over HTTP
            httpx.get(f"https://{served.url}/v2/health/live", timeout=5)


def _serve(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inferlane", "serve", str(repo), "--log-level", "warning", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_grpc_port_refusals_are_one_line_and_exit_2(grpc_repo: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _serve(grpc_repo, "--port", str(free_port()), "--grpc-port", str(port))
    assert done.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in done.stderr, done.stderr
    assert "--grpc-port" in done.stderr
    same = free_port()
    done = _serve(grpc_repo, "--port", str(same), "--grpc-port", str(same))
    assert done.returncode == 2 and "is also the HTTP port" in done.stderr, done.stderr
    done = _serve(grpc_repo, "--ssl-certfile", str(tmp_path / "missing.pem"))
    assert done.returncode == 2 and "needs both --ssl-certfile and --ssl-keyfile" in done.stderr, done.stderr
