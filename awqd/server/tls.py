"""TLS server credentials that follow certificate rotation on disk.

gRPC asks the fetcher for a new configuration before each TLS handshake. The fetcher re-reads the files only when
one of them changed (mtime, size or inode, so Kubernetes' atomic secret swaps count), and keeps the last good
configuration if the new files do not load, e.g. a certificate written before its matching key.
"""

import ssl
from pathlib import Path

import grpc
import structlog

from awqd.errors import InvalidArgument

log = structlog.get_logger("awqd")


class CertificateFiles:
    def __init__(self, cert: Path, key: Path, client_ca: Path | None):
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self._stamp: tuple[tuple[int, int, int], ...] = ()
        self.initial = self._load()

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's cert-config fetcher: a new configuration when the files changed, None to keep the current one."""
        try:
            if self._stat() == self._stamp:
                return None
            config = self._load()
        except InvalidArgument as error:
            log.error("tls_reload_failed", error=str(error), keeping="the previous certificates")
            return None
        log.info("tls_reloaded", cert=str(self.cert))
        return config

    def _paths(self) -> list[tuple[str, Path]]:
        named = [("--tls-cert", self.cert), ("--tls-key", self.key)]
        return [*named, ("--tls-client-ca", self.client_ca)] if self.client_ca else named

    def _stat(self) -> tuple[tuple[int, int, int], ...]:
        stamps = []
        for flag, path in self._paths():
            try:
                status = path.stat()
            except OSError as error:
                raise InvalidArgument(flag, f"cannot read {path}: {error.strerror}") from None
            stamps.append((status.st_mtime_ns, status.st_size, status.st_ino))
        return tuple(stamps)

    def _load(self) -> grpc.ServerCertificateConfiguration:
        """Reads and checks the files; on success they become the ones future fetches compare against."""
        stamp = self._stat()
        try:
            cert, key = self.cert.read_bytes(), self.key.read_bytes()
            client_ca = self.client_ca.read_bytes() if self.client_ca else None
        except OSError as error:
            raise InvalidArgument("--tls-cert/--tls-key", f"cannot read {error.filename}: {error.strerror}") from None
        # ssl checks what gRPC would only find at the first handshake: PEM syntax and that the key matches.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as error:
            raise InvalidArgument("--tls-cert/--tls-key", f"{self.cert} with {self.key} do not load: {error}") from None
        if self.client_ca is not None:
            try:
                context.load_verify_locations(self.client_ca)
            except (OSError, ssl.SSLError) as error:
                raise InvalidArgument("--tls-client-ca", f"{self.client_ca} does not load: {error}") from None
        if self._stat() != stamp:
            # Rotated between reading and checking: what was read may not be what was checked.
            raise InvalidArgument("--tls-cert/--tls-key", "the files changed while loading; retrying next handshake")
        self._stamp = stamp
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=client_ca)


def server_credentials(cert: Path, key: Path, client_ca: Path | None) -> grpc.ServerCredentials:
    """TLS, and mTLS when client_ca is given; raises InvalidArgument naming the flag whose file is bad."""
    files = CertificateFiles(cert, key, client_ca)
    return grpc.dynamic_ssl_server_credentials(
        files.initial, files.fetch, require_client_authentication=client_ca is not None
    )
