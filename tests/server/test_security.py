"""TLS, mTLS, certificate rotation, bearer tokens, reflection off and limits, against real daemons on loopback.

Certificates are made at test time with `cryptography`: a CA, a server certificate for 127.0.0.1 and a client
certificate, plus a second, unrelated CA.
"""

import datetime
import ipaddress
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from awqd_client import AwqdClient, AwqdError
from awqd_client.v1 import awqd_pb2 as pb
from awqd_client.v1 import awqd_pb2_grpc

from daemon_process import DaemonProcess, serving, wait_until

AWQCTL = str(Path(sys.executable).parent / "awqctl")
BOOT_ARGS = ("--no-demo-model", "--selection-budget", "3", "--metrics-listen", "off")
AUTH_TOKEN = "inference-secret-1"
ADMIN_TOKEN = "admin-secret-2"
DEMO = "awqd-demo"


@dataclass
class Issuer:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(common_name: str) -> Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # key_cert_sign, crl_sign
        .sign(key, hashes.SHA256())
    )
    return Issuer(key, cert)


def issue(ca: Issuer, common_name: str, *, server: bool) -> Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
    )
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Issuer(key, builder.sign(ca.key, hashes.SHA256()))


def write_pem(directory: Path, stem: str, issued: Issuer) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(issued.cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        issued.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """ca.crt, server.crt/key, client.crt/key, other-ca.crt, and rotated.crt/key signed by other-ca."""
    directory = tmp_path_factory.mktemp("pki")
    ca, other_ca = make_ca("awqd test CA"), make_ca("unrelated CA")
    write_pem(directory, "ca", ca)
    write_pem(directory, "other-ca", other_ca)
    write_pem(directory, "server", issue(ca, "awqd", server=True))
    write_pem(directory, "client", issue(ca, "awqctl", server=False))
    write_pem(directory, "rotated", issue(other_ca, "awqd", server=True))
    return directory


def tls(pki: Path, ca: str = "ca", client: str | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=(pki / f"{ca}.crt").read_bytes(),
        private_key=(pki / f"{client}.key").read_bytes() if client else None,
        certificate_chain=(pki / f"{client}.crt").read_bytes() if client else None,
    )


def wait_serving(daemon: DaemonProcess, credentials: grpc.ChannelCredentials | None, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.process.poll() is not None:
            raise RuntimeError("awqd exited during boot:\n" + "\n".join(daemon.log_lines))
        try:
            with AwqdClient(daemon.target, timeout=5, credentials=credentials) as client:
                if client.health() == "SERVING":
                    return
        except AwqdError:
            pass
        time.sleep(0.2)
    raise TimeoutError("awqd did not become SERVING:\n" + "\n".join(daemon.log_lines[-50:]))


@pytest.fixture(scope="module")
def tls_daemon(pki, tmp_path_factory):
    """Server TLS; the inference token from a file, the admin token from the environment; no reflection."""
    token_file = tmp_path_factory.mktemp("secrets") / "auth-token"
    token_file.write_text(AUTH_TOKEN + "\n")
    daemon = DaemonProcess(
        tmp_path_factory.mktemp("cache"),
        *BOOT_ARGS,
        "--tls-cert", str(pki / "server.crt"),
        "--tls-key", str(pki / "server.key"),
        "--auth-token-file", str(token_file),
        "--no-reflection",
        env={"AWQD_ADMIN_TOKEN": ADMIN_TOKEN},
    )  # fmt: skip
    try:
        wait_serving(daemon, tls(pki))
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def mtls_daemon(pki, tmp_path_factory):
    """Client certificates required; serves copies of the server files so a test can rotate them."""
    served = tmp_path_factory.mktemp("served")
    for name in ("server.crt", "server.key"):
        (served / name).write_bytes((pki / name).read_bytes())
    daemon = DaemonProcess(
        tmp_path_factory.mktemp("cache"),
        *BOOT_ARGS,
        "--tls-cert", str(served / "server.crt"),
        "--tls-key", str(served / "server.key"),
        "--tls-client-ca", str(pki / "ca.crt"),
    )  # fmt: skip
    daemon.served = served
    try:
        wait_serving(daemon, tls(pki, client="client"))
        yield daemon
    finally:
        daemon.stop()


def describe_code(target: str, **client_options) -> grpc.StatusCode:
    try:
        with AwqdClient(target, timeout=10, **client_options) as client:
            client.describe()
    except AwqdError as error:
        return error.code
    return grpc.StatusCode.OK


# TLS


def test_tls_client_describes(tls_daemon, pki):
    with AwqdClient(tls_daemon.target, credentials=tls(pki), token=AUTH_TOKEN) as client:
        assert client.describe().devices[0].uuid == "cpu"
    listening = tls_daemon.events("listening")[-1]
    assert listening["tls"] == "server" and listening["auth"] == "tokens" and listening["reflection"] is False


def test_plaintext_client_to_tls_server_fails_cleanly(tls_daemon):
    assert describe_code(tls_daemon.target, token=AUTH_TOKEN) is grpc.StatusCode.UNAVAILABLE
    result = subprocess.run(
        [AWQCTL, "--target", tls_daemon.target, "--timeout", "5", "describe"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("awqctl: error: UNAVAILABLE"), result.stderr
    assert "Traceback" not in result.stderr


def test_client_trusting_another_ca_is_refused(tls_daemon, pki):
    code = describe_code(tls_daemon.target, credentials=tls(pki, ca="other-ca"), token=AUTH_TOKEN)
    assert code is grpc.StatusCode.UNAVAILABLE


def test_awqctl_over_tls_with_a_token(tls_daemon, pki):
    result = subprocess.run(
        [AWQCTL, "--target", tls_daemon.target, "--tls-ca", str(pki / "ca.crt"), "--token", AUTH_TOKEN, "models"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_awqctl_token_from_env_and_file(tls_daemon, pki, tmp_path):
    command = [AWQCTL, "--target", tls_daemon.target, "--tls-ca", str(pki / "ca.crt"), "models"]
    env = {**os.environ, "AWQCTL_TOKEN": AUTH_TOKEN}
    assert subprocess.run(command, capture_output=True, text=True, env=env, timeout=60).returncode == 0
    token_file = tmp_path / "token"
    token_file.write_text(AUTH_TOKEN + "\n")
    env = {**os.environ, "AWQCTL_TOKEN_FILE": str(token_file)}
    assert subprocess.run(command, capture_output=True, text=True, env=env, timeout=60).returncode == 0
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and refused.stderr.startswith("awqctl: error: UNAUTHENTICATED")


# mTLS and rotation


def test_mtls_without_a_client_certificate_is_refused(mtls_daemon, pki):
    assert describe_code(mtls_daemon.target, credentials=tls(pki)) is grpc.StatusCode.UNAVAILABLE


def test_mtls_with_a_client_certificate_works(mtls_daemon, pki):
    assert describe_code(mtls_daemon.target, credentials=tls(pki, client="client")) is grpc.StatusCode.OK
    assert mtls_daemon.events("listening")[-1]["tls"] == "mutual"


def test_awqctl_with_a_client_certificate(mtls_daemon, pki):
    certificate = ["--tls-cert", str(pki / "client.crt"), "--tls-key", str(pki / "client.key")]
    command = [AWQCTL, "--target", mtls_daemon.target, "--tls-ca", str(pki / "ca.crt"), *certificate, "health"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "SERVING", result.stderr


def test_rotated_certificates_are_served_without_a_restart(mtls_daemon, pki):
    for name in ("crt", "key"):
        staged = mtls_daemon.served / f"staged.{name}"
        staged.write_bytes((pki / f"rotated.{name}").read_bytes())
        os.replace(staged, mtls_daemon.served / f"server.{name}")  # atomic, as a Kubernetes secret update is
    deadline = time.monotonic() + 10
    while describe_code(mtls_daemon.target, credentials=tls(pki, "other-ca", "client")) is not grpc.StatusCode.OK:
        assert time.monotonic() < deadline, "the rotated certificate was not served"
        time.sleep(0.2)
    assert describe_code(mtls_daemon.target, credentials=tls(pki, client="client")) is grpc.StatusCode.UNAVAILABLE
    assert mtls_daemon.events("tls_reloaded")
    assert mtls_daemon.process.poll() is None


# Tokens: the inference token covers Describe/Generate/ListModels; the admin token also LoadModel/UnloadModel/Benchmark


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (None, grpc.StatusCode.UNAUTHENTICATED),
        ("wrong", grpc.StatusCode.UNAUTHENTICATED),
        (AUTH_TOKEN, grpc.StatusCode.OK),  # read from --auth-token-file
        (ADMIN_TOKEN, grpc.StatusCode.OK),  # read from AWQD_ADMIN_TOKEN
    ],
)
def test_tokens_on_an_inference_rpc(tls_daemon, pki, token, expected):
    assert describe_code(tls_daemon.target, credentials=tls(pki), token=token) is expected


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (None, grpc.StatusCode.UNAUTHENTICATED),
        ("wrong", grpc.StatusCode.UNAUTHENTICATED),
        (AUTH_TOKEN, grpc.StatusCode.PERMISSION_DENIED),
        (ADMIN_TOKEN, grpc.StatusCode.NOT_FOUND),  # authorized; the model does not exist
    ],
)
def test_tokens_on_an_admin_rpc(tls_daemon, pki, token, expected):
    client = AwqdClient(tls_daemon.target, timeout=10, credentials=tls(pki), token=token)
    with client, pytest.raises(AwqdError) as raised:
        client.unload_model("no-such-model")
    assert raised.value.code is expected
    if expected is not grpc.StatusCode.NOT_FOUND:
        assert "authorization" in raised.value.message


def test_refused_calls_are_logged_with_their_code(tls_daemon, pki):
    describe_code(tls_daemon.target, credentials=tls(pki), token="wrong")
    deadline = time.monotonic() + 5
    while not any(e["code"] == "UNAUTHENTICATED" for e in tls_daemon.events("rpc")):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert not any(ADMIN_TOKEN in line or AUTH_TOKEN in line for line in tls_daemon.log_lines)


def test_health_needs_no_token(tls_daemon, pki):
    with AwqdClient(tls_daemon.target, credentials=tls(pki)) as client:
        assert client.health() == "SERVING"


def test_reflection_off_hides_the_reflection_service(tls_daemon, pki):
    with grpc.secure_channel(tls_daemon.target, tls(pki)) as channel, pytest.raises(grpc.RpcError) as raised:
        ProtoReflectionDescriptorDatabase(channel).get_services()
    assert raised.value.code() is grpc.StatusCode.UNIMPLEMENTED


def test_bad_token_file_is_a_clean_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "awqd", "serve", "--cache-dir", str(tmp_path), *BOOT_ARGS,
         "--auth-token-file", str(tmp_path / "missing")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--auth-token-file" in result.stderr and "Traceback" not in result.stderr


def test_mismatched_certificate_and_key_is_a_clean_error(pki, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "awqd", "serve", "--listen", "127.0.0.1:0", "--cache-dir", str(tmp_path), *BOOT_ARGS,
         "--tls-cert", str(pki / "server.crt"), "--tls-key", str(pki / "client.key")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "tls_failed" in result.stderr and "--tls-cert/--tls-key" in result.stderr
    assert "Traceback" not in result.stderr


# Limits


MAX_STREAMS = 2
MAX_PROMPT_TOKENS = 16


@pytest.fixture(scope="module")
def limited_daemon(demo_model_dir, awqd_cache_dir):
    with serving(
        awqd_cache_dir,
        "--selection-budget", "3",
        "--metrics-listen", "127.0.0.1:0",
        "--max-concurrent-streams", str(MAX_STREAMS),
        "--max-prompt-tokens", str(MAX_PROMPT_TOKENS),
    ) as daemon:  # fmt: skip
        yield daemon


def test_streams_over_the_limit_get_resource_exhausted(limited_daemon):
    request = pb.GenerateRequest(model=DEMO, prompt="The weather today", max_new_tokens=400)
    with (
        grpc.insecure_channel(limited_daemon.target) as channel,
        AwqdClient(limited_daemon.target, timeout=60) as client,
    ):
        # The model runs one generation at a time: the first stream runs, the others wait behind it.
        held = [awqd_pb2_grpc.AwqdServiceStub(channel).Generate(request) for _ in range(MAX_STREAMS)]
        wait_until(lambda: limited_daemon.streams_in_flight() >= MAX_STREAMS, 30, "the held streams")

        with pytest.raises(AwqdError) as raised:
            list(client.generate(DEMO, "hello", max_new_tokens=2))
        assert raised.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-concurrent-streams" in raised.value.message and str(MAX_STREAMS) in raised.value.message

        for call in held:
            call.cancel()  # capacity must come back, also from the stream that was still queued
        wait_until(lambda: limited_daemon.streams_in_flight() == 0, 60, "cancelled streams to give their slots back")
        messages = list(client.generate(DEMO, "hello", max_new_tokens=2))
        assert messages[-1].HasField("completion")


def test_prompt_over_the_cap_is_invalid_argument(limited_daemon):
    with AwqdClient(limited_daemon.target, timeout=60) as client:
        with pytest.raises(AwqdError) as raised:
            list(client.generate(DEMO, "The weather today is " * 8, max_new_tokens=2))
        assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert raised.value.message.startswith("prompt:") and str(MAX_PROMPT_TOKENS) in raised.value.message
        messages = list(client.generate(DEMO, prompt_token_ids=list(range(5, 5 + MAX_PROMPT_TOKENS)), max_new_tokens=2))
        assert messages[-1].completion.usage.prompt_tokens == MAX_PROMPT_TOKENS
