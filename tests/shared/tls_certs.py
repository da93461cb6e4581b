"""A private CA and a server certificate for 127.0.0.1/localhost, made with the real
``openssl`` command (tests of the API over TLS)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Certs:
    ca: Path  # the CA's certificate (what --ca-file takes)
    cert: Path  # the server's certificate, signed by the CA
    key: Path  # the server's private key (mode 600)
    other_ca: Path  # a CA that signed nothing here (a client trusting it must refuse)


def _openssl(folder: Path, *args: str) -> None:
    done = subprocess.run(
        ["openssl", *args], cwd=folder, capture_output=True, text=True, check=False, timeout=60
    )
    if done.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed: {done.stderr}")


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    _openssl(
        folder,
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", key.name, "-out", cert.name, "-days", "2",
        "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return key, cert


def _signed(
    folder: Path, names: tuple[str, str, str, str], ca: tuple[str, str], ext: str, subject: str
) -> None:
    """A key and a certificate the CA (certificate, key) signs, with ``ext``'s extensions;
    ``names``: the key, request, certificate and extensions files in ``folder``."""
    key, csr, cert, ext_file = names
    (folder / ext_file).write_text(ext, encoding="utf-8")
    _openssl(
        folder,
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", csr, "-subj", subject,
    )  # fmt: skip
    _openssl(
        folder,
        "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1],
        "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext_file,
    )  # fmt: skip


def make_certs(folder: Path) -> Certs:
    """A CA, a server certificate for 127.0.0.1, ::1 and localhost, and an unrelated CA."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed for the TLS tests (apt-get install openssl)")
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca(folder, "test-ca")
    _other_key, other_cert = _ca(folder, "other-ca")
    _signed(
        folder,
        ("server.key", "server.csr", "server.pem", "server.ext"),
        (ca_cert.name, ca_key.name),
        "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\n"
        "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        "/CN=gitorch-api",
    )
    key = folder / "server.key"
    key.chmod(0o600)
    return Certs(ca=ca_cert, cert=folder / "server.pem", key=key, other_ca=other_cert)


@dataclass(frozen=True)
class ClientCA:
    """A CA in docker's file names (``ca.pem``, ``ca-key.pem``: what an engine's
    ``--tlscacert`` takes and what signs its server certificate) and a client certificate
    it signed (``client.pem``, ``client-key.pem``), all in ``folder``; ``other_ca``: a CA
    that signed nothing here."""

    folder: Path
    ca: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def make_client_ca(folder: Path) -> ClientCA:
    """A CA and a client certificate (extendedKeyUsage clientAuth), with the real openssl."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed for the TLS tests (apt-get install openssl)")
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca(folder, "ca")
    ca_key.rename(folder / "ca-key.pem")
    _other_key, other_cert = _ca(folder, "other-ca")
    _signed(
        folder,
        ("client-key.pem", "client.csr", "client.pem", "client.ext"),
        (ca_cert.name, "ca-key.pem"),
        "extendedKeyUsage=clientAuth\n",
        "/CN=gitorch",
    )
    (folder / "client-key.pem").chmod(0o600)
    return ClientCA(folder, ca_cert, folder / "client.pem", folder / "client-key.pem", other_cert)
