"""`tunelab serve` starts without PyTorch: the models' modules are imported when a model is first asked for
(server/chat.py), so a server that only trains, or has not been asked yet, answers at once."""

from tests.serving import Server


def test_the_server_answers_before_it_has_imported_pytorch(tmp_path):
    server = Server(tmp_path / "data")
    try:
        loaded = open(f"/proc/{server.process.pid}/maps").read()
        assert "libtorch" not in loaded and "libc10" not in loaded
    finally:
        server.stop()
