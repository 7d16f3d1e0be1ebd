"""The site agent's API over TLS with a real certificate chain (a CA made here, and a server certificate it signed):
the Python API on a foreign host verifies the agent's certificate against the CA that ``api.json`` names, and
refuses a server whose certificate another CA signed or whose name is not the one it dialled."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import pytest

from tests.conftest import FOREIGN_HOST

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402


def _name(cn: str) -> Any:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> Tuple[Any, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _server_cert(ca_key: Any, ca_cert: Any, names: List[str]) -> Tuple[Any, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    alt: List[Any] = [x509.DNSName(n) for n in names]
    cert = (x509.CertificateBuilder().subject_name(_name(names[0])).issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def _pem(cert: Any) -> bytes:
    return bytes(cert.public_bytes(serialization.Encoding.PEM))


@pytest.fixture
def tls_site(site: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tuple[Any, Path]]:
    """The site's agent API on 127.0.0.1 over TLS, its certificate (for "localhost") signed by a CA made here; the
    test process is on a foreign host. Yields (the site, the CA's file)."""
    from balsam._api import sites as _sites
    from balsam.services.api_server import start_api_server
    from balsam.settings import ApiSettings

    ca_key, ca_cert = _ca("Balsam test CA")
    key, cert = _server_cert(ca_key, ca_cert, ["localhost"])
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "ca.pem").write_bytes(_pem(ca_cert))
    (certs / "server.pem").write_bytes(_pem(cert))
    (certs / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    (certs / "server.key").chmod(0o600)
    settings = ApiSettings(bind="127.0.0.1", advertise="localhost", tls_cert=str(certs / "server.pem"), tls_key=str(certs / "server.key"),
                           tls_ca=str(certs / "ca.pem"))
    server = start_api_server(site.path, site.store, settings, host=site.host)
    monkeypatch.setenv("BALSAM_HOSTNAME", FOREIGN_HOST)
    _sites.reset()
    try:
        yield site, certs / "ca.pem"
    finally:
        _sites.reset()
        server.stop()


def _address(site: Any) -> Path:
    return Path(site.path) / ".balsam" / "api.json"


def test_the_client_verifies_the_agents_certificate_and_uses_the_api(tls_site: Tuple[Any, Path], hello: Any) -> None:
    from balsam.api import Job
    from balsam.http.client import HttpClient

    site, ca = tls_site
    info = json.loads(_address(site).read_text())
    assert info["scheme"] == "https" and info["url"].startswith("https://localhost:") and info["cafile"] == str(ca.resolve())
    job = Job("tls/1", hello, parameters={"say_hello_to": "TLS"})
    job.save()
    assert [str(j.workdir) for j in Job.objects.filter(workdir__contains="tls")] == ["tls/1"]
    assert HttpClient(site.path / ".balsam", retry_s=2).request("GET", "/v1/whoami")["kind"] == "site"


def test_a_certificate_from_another_ca_is_refused(tls_site: Tuple[Any, Path], tmp_path: Path) -> None:
    from balsam.exceptions import ServiceError
    from balsam.http.client import HttpClient

    site, _ca_file = tls_site
    _key, other = _ca("Some other CA")
    (tmp_path / "other-ca.pem").write_bytes(_pem(other))
    info = json.loads(_address(site).read_text())
    _address(site).write_text(json.dumps(dict(info, cafile=str(tmp_path / "other-ca.pem"))))
    with pytest.raises(ServiceError, match="certificate") as err:
        HttpClient(site.path / ".balsam", retry_s=2).request("GET", "/v1/whoami")
    assert "verify" in str(err.value)


def test_a_server_whose_certificate_names_another_host_is_refused(tls_site: Tuple[Any, Path]) -> None:
    from balsam.exceptions import ServiceError
    from balsam.http.client import HttpClient

    site, _ca_file = tls_site
    info = json.loads(_address(site).read_text())
    _address(site).write_text(json.dumps(dict(info, host="127.0.0.1", addresses=["127.0.0.1"])))  # the certificate says "localhost"
    with pytest.raises(ServiceError, match="certificate") as err:
        HttpClient(site.path / ".balsam", retry_s=2).request("GET", "/v1/whoami")
    assert "127.0.0.1" in str(err.value)


def test_without_the_ca_the_system_store_does_not_trust_a_private_ca(tls_site: Tuple[Any, Path]) -> None:
    from balsam.exceptions import ServiceError
    from balsam.http.client import HttpClient

    site, _ca_file = tls_site
    info = json.loads(_address(site).read_text())
    info.pop("cafile")
    _address(site).write_text(json.dumps(info))
    with pytest.raises(ServiceError, match="certificate"):
        HttpClient(site.path / ".balsam", retry_s=2).request("GET", "/v1/whoami")
