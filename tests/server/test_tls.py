"""`tunelab serve --tls-cert --tls-key` serves HTTPS (uvicorn's TLS), and the official client trains through
it with the certificate trusted; plain HTTP to the same port gets no answer; the dashboard's session cookie
is Secure."""

import os
import ssl
import subprocess
import sys
import time

import httpx2 as httpx
import openai
import pytest

from tests.serving import API_KEY, free_port

pytestmark = pytest.mark.slow


def test_the_server_speaks_https_with_the_certificate_it_was_given(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    trusted = ssl.create_default_context(cafile=str(cert))
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tunelab.cli", "serve", "--port", str(port), "--data-dir",
                               str(tmp_path / "data"), "--api-key", API_KEY, "--tls-cert", str(cert), "--tls-key",
                               str(key)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=dict(os.environ, TUNELAB_API_KEY=""))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"https://127.0.0.1:{port}/health", verify=trusted, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline and server.poll() is None, server.stdout.read().decode()[-2000:]
                time.sleep(0.2)
        with openai.OpenAI(base_url=f"https://127.0.0.1:{port}/v1", api_key=API_KEY, max_retries=0,
                           http_client=httpx.Client(verify=trusted)) as client:
            assert [m.id for m in client.models.list().data] == ["default"]
        signed_in = httpx.post(f"https://127.0.0.1:{port}/login", data={"key": API_KEY}, verify=trusted,
                               headers={"Origin": f"https://127.0.0.1:{port}"})
        cookie = signed_in.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "; secure" in cookie  # over TLS: Secure too
        with pytest.raises(httpx.TransportError):  # plain HTTP is not answered
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=3)
        with pytest.raises(httpx.TransportError):  # nor HTTPS by a client that does not trust the certificate
            httpx.get(f"https://127.0.0.1:{port}/health", timeout=3)
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=60)
    assert "tunelab serve: https://127.0.0.1" in output.decode()
