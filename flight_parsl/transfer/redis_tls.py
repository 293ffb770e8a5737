"""TLS for a run's own redis-server: a CA and a server certificate made per run.

:func:`make_certificates` writes, into a private directory (the managed server's
temporary directory, mode 0700, never the run directory), a fresh CA certificate (``ca.crt``) and a server certificate it signs (``server.crt``,
``server.key``) whose subject alternative name is the address the server listens on, so
that clients check the host name too. The CA's key signs that one certificate and is
thrown away (it is never written down). Every file is mode 0600; the server's key never
leaves the directory, which is removed with the server. Clients need only the CA certificate's PEM text (public):
it rides in the connector's configuration and redis-py reads it with ``ssl_ca_data``.

The certificates come from the ``cryptography`` package when it is installed, else from
the ``openssl`` command. Keys are EC P-256; the certificates are valid for 7 days.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from flight_parsl.core.errors import ExecutorError
from flight_parsl.transfer.redis_auth import write_private

__all__ = ["Certificates", "is_loopback", "make_certificates"]

#: Days a run's certificates are valid.
VALID_DAYS = 7


@dataclass(frozen=True)
class Certificates:
    """Where a run's TLS files are, and the CA certificate's text for clients."""

    directory: Path
    ca_pem: str = field(repr=False)

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def cert_file(self) -> Path:
        return self.directory / "server.crt"

    @property
    def key_file(self) -> Path:
        return self.directory / "server.key"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or ``localhost`` (then TLS is not needed)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_certificates(directory: Path, host: str, tool: str | None = None) -> Certificates:
    """Make a CA and a server certificate for ``host`` in ``directory`` (which must exist).

    Args:
        directory: A private directory (mode 0700) the files go into, 0600 each.
        host: The address (or name) clients connect to: the certificate's subject alternative name.
        tool: ``cryptography`` or ``openssl``; None picks the package when it is installed.

    Raises:
        ExecutorError: neither the package nor the openssl command is there, or openssl failed.
    """
    if tool is None:
        try:
            import cryptography  # noqa: F401
        except ImportError:
            tool = "openssl"
        else:
            tool = "cryptography"
    if tool == "cryptography":
        _with_cryptography(directory, host)
    else:
        _with_openssl(directory, host)
    for path in directory.glob("*"):
        if path.suffix in (".crt", ".key"):
            os.chmod(path, 0o600)
    return Certificates(directory, (directory / "ca.crt").read_text())


def _with_cryptography(directory: Path, host: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=VALID_DAYS)

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("flight_parsl run CA"))
        .issuer_name(name("flight_parsl run CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    try:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alt = x509.DNSName(host)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(host))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    def pem_key(k: ec.EllipticCurvePrivateKey) -> str:
        return k.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()

    write_private(directory / "ca.crt", ca.public_bytes(serialization.Encoding.PEM).decode())
    write_private(directory / "server.key", pem_key(key))
    write_private(directory / "server.crt", cert.public_bytes(serialization.Encoding.PEM).decode())


def _with_openssl(directory: Path, host: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ExecutorError(
            "Redis over TLS needs certificates: install the python package cryptography or the "
            "openssl command, or set transfer.redis_tls=false"
        )
    try:
        ipaddress.ip_address(host)
        alt = f"IP:{host}"
    except ValueError:
        alt = f"DNS:{host}"
    write_private(directory / "server.ext", f"subjectAltName={alt}\nbasicConstraints=critical,CA:FALSE\n"
                                            "extendedKeyUsage=serverAuth\n")
    days = str(VALID_DAYS)
    steps = [
        ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "ca.key"],
        ["req", "-x509", "-new", "-key", "ca.key", "-sha256", "-days", days, "-subj", "/CN=flight_parsl run CA",
         "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature", "-out", "ca.crt"],
        ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "server.key"],
        ["req", "-new", "-key", "server.key", "-subj", f"/CN={host}", "-out", "server.csr"],
        ["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
         "-days", days, "-sha256", "-extfile", "server.ext", "-out", "server.crt"],
    ]
    old = os.umask(0o077)  # every file openssl writes is its owner's only
    try:
        for step in steps:
            done = subprocess.run([openssl, *step], cwd=directory, capture_output=True, text=True, timeout=60,
                                  stdin=subprocess.DEVNULL)
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise ExecutorError(f"openssl {step[0]} failed making the run's Redis certificates: {last}")
    finally:
        os.umask(old)
        for extra in ("server.csr", "server.ext", "ca.srl", "ca.key"):  # the CA signs nothing more
            (directory / extra).unlink(missing_ok=True)
