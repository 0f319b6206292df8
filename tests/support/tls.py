"""Throwaway certificate authorities and certificates, made by the openssl CLI (EC P-256, valid two days)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
SERVER_EXT = "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
CLIENT_EXT = "extendedKeyUsage=clientAuth\n"
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(cwd: Path, ca: str) -> None:
    """``cwd/{ca}.key`` and the self-signed ``cwd/{ca}.crt``."""
    openssl(cwd, "req", "-x509", *EC, "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-subj", f"/CN={ca}", "-days", "2")


def issue(cwd: Path, ca: str, name: str, extensions: str) -> None:
    """``cwd/{name}.key`` and ``cwd/{name}.crt`` signed by ``ca`` with the given X.509 extensions."""
    openssl(cwd, "req", *EC, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
    (cwd / f"{name}.ext").write_text(extensions)
    openssl(cwd, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")


def make_certs(cwd: Path, ca: str = "ca") -> Path:
    """A CA with a server certificate (localhost, 127.0.0.1) and a client certificate, all in ``cwd``."""
    make_ca(cwd, ca)
    issue(cwd, ca, "server", SERVER_EXT)
    issue(cwd, ca, "client", CLIENT_EXT)
    return cwd
