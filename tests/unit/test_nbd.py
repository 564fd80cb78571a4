"""The NBD client against a scripted server that misbehaves on purpose."""

import os
import socket
import struct
import tempfile
import threading

import pytest

from vmsnap_driver import nbd

SIZE = 8 * 1024 * 1024
CONTEXT_ID = 7


def data(offset, length):
    return bytes((offset + i) % 251 for i in range(length))


class FakeServer:
    """Newstyle handshake, then each request answered by ``reply``.

    ``reply(sock, handle, command, offset, length)`` writes the answer;
    every request is also kept in ``requests``.
    """

    def __init__(self, reply, block_size=None):
        self.reply = reply
        self.block_size = block_size
        self.requests = []
        self.dir = tempfile.mkdtemp()
        self.path = os.path.join(self.dir, 'nbd.sock')
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(1)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _recv(self, sock, n):
        buf = b''
        while len(buf) < n:
            got = sock.recv(n - len(buf))
            if not got:
                raise EOFError
            buf += got
        return buf

    def _option_reply(self, sock, option, rtype, payload=b''):
        sock.sendall(struct.pack('>QIII', nbd.OPT_REPLY_MAGIC, option, rtype,
                                 len(payload)) + payload)

    def _serve(self):
        sock, _ = self._listener.accept()
        try:
            sock.sendall(struct.pack('>QQH', nbd.NBDMAGIC, nbd.IHAVEOPT,
                                     nbd.FLAG_FIXED_NEWSTYLE))
            self._recv(sock, 4)
            while True:
                _magic, option, length = struct.unpack(
                    '>QII', self._recv(sock, 16))
                self._recv(sock, length)
                if option == nbd.OPT_SET_META_CONTEXT:
                    self._option_reply(
                        sock, option, nbd.REP_META_CONTEXT,
                        struct.pack('>I', CONTEXT_ID)
                        + nbd.ALLOCATION_CONTEXT)
                if option == nbd.OPT_GO:
                    self._option_reply(
                        sock, option, nbd.REP_INFO,
                        struct.pack('>HQH', nbd.INFO_EXPORT, SIZE, 0))
                    if self.block_size:
                        self._option_reply(
                            sock, option, nbd.REP_INFO,
                            struct.pack('>HIII', nbd.INFO_BLOCK_SIZE,
                                        *self.block_size))
                self._option_reply(sock, option, nbd.REP_ACK)
                if option == nbd.OPT_GO:
                    break
            while True:
                _magic, _flags, command, handle, offset, length = (
                    struct.unpack('>IHHQQI', self._recv(sock, 28)))
                if command == nbd.CMD_DISC:
                    return
                self.requests.append((command, offset, length))
                self.reply(sock, handle, command, offset, length)
        except (EOFError, OSError):
            pass
        finally:
            sock.close()

    def close(self):
        self._listener.close()
        os.unlink(self.path)
        os.rmdir(self.dir)


def chunk(sock, handle, rtype, payload, done):
    sock.sendall(struct.pack('>IHHQI', nbd.STRUCTURED_REPLY_MAGIC,
                             nbd.REPLY_FLAG_DONE if done else 0, rtype,
                             handle, len(payload)) + payload)


def data_chunk(sock, handle, offset, length, done=True):
    chunk(sock, handle, nbd.REPLY_TYPE_OFFSET_DATA,
          struct.pack('>Q', offset) + data(offset, length), done)


@pytest.fixture
def serve():
    servers = []

    def start(reply, block_size=None):
        server = FakeServer(reply, block_size)
        servers.append(server)
        return server
    yield start
    for server in servers:
        server.close()


def test_read_in_two_chunks_and_a_hole(serve):
    def reply(sock, handle, command, offset, length):
        half = length // 2
        chunk(sock, handle, nbd.REPLY_TYPE_OFFSET_HOLE,
              struct.pack('>QI', offset + half, length - half), False)
        data_chunk(sock, handle, offset, half)
    server = serve(reply)
    with nbd.Client(server.path, 'vda') as client:
        assert client.size == SIZE
        got = client.read(4096, 8192)
    assert bytes(got) == data(4096, 4096) + bytes(4096)


@pytest.mark.parametrize('bad, words', [
    (lambda s, h, o, n: data_chunk(s, h, o + n, 512), 'outside'),
    (lambda s, h, o, n: data_chunk(s, h, o - 512, 1024), 'outside'),
    (lambda s, h, o, n: data_chunk(s, h, o, n // 2), 'exactly'),
    # Two chunks adding up to the length, overlapping and leaving a gap.
    (lambda s, h, o, n: (data_chunk(s, h, o, n // 2, done=False),
                         data_chunk(s, h, o, n // 2)), 'exactly'),
    (lambda s, h, o, n: data_chunk(s, h + 1, o, n), 'unknown request'),
    (lambda s, h, o, n: s.sendall(struct.pack(
        '>IIQ', nbd.SIMPLE_REPLY_MAGIC, 0, h + 5)), 'unknown request'),
])
def test_replies_that_do_not_fit_the_request_are_refused(serve, bad, words):
    server = serve(lambda sock, handle, command, offset, length:
                   bad(sock, handle, offset, length))
    with nbd.Client(server.path, 'vda') as client:
        with pytest.raises(nbd.NbdError) as raised:
            client.read(4096, 8192)
    assert words in str(raised.value)


def test_zero_length_block_status_descriptor_fails_instead_of_looping(
        serve):
    def reply(sock, handle, command, offset, length):
        chunk(sock, handle, nbd.REPLY_TYPE_BLOCK_STATUS,
              struct.pack('>III', CONTEXT_ID, 0, 0), True)
    server = serve(reply)
    with nbd.Client(server.path, 'vda') as client:
        with pytest.raises(nbd.NbdError) as raised:
            client.extents()
    assert 'zero-length' in str(raised.value)


def test_block_status_of_another_context_is_refused(serve):
    def reply(sock, handle, command, offset, length):
        chunk(sock, handle, nbd.REPLY_TYPE_BLOCK_STATUS,
              struct.pack('>III', CONTEXT_ID + 1, length, 0), True)
    server = serve(reply)
    with nbd.Client(server.path, 'vda') as client:
        with pytest.raises(nbd.NbdError):
            client.extents()


def test_extents_merge_and_cover_the_export(serve):
    def reply(sock, handle, command, offset, length):
        chunk(sock, handle, nbd.REPLY_TYPE_BLOCK_STATUS,
              struct.pack('>IIIIIII', CONTEXT_ID, 65536, 0, 65536, 0,
                          SIZE, nbd.STATE_ZERO | nbd.STATE_HOLE), True)
    server = serve(reply)
    with nbd.Client(server.path, 'vda') as client:
        extents = client.extents()
    assert extents == [nbd.Extent(0, 131072, False),
                       nbd.Extent(131072, SIZE - 131072, True)]


def test_reads_follow_the_server_block_size_limits(serve):
    def reply(sock, handle, command, offset, length):
        data_chunk(sock, handle, offset, length)
    server = serve(reply, block_size=(4096, 4096, 1024 * 1024))
    with nbd.Client(server.path, 'vda') as client:
        assert bytes(client.read(0, 3 * 1024 * 1024)) == data(
            0, 3 * 1024 * 1024)
        with pytest.raises(nbd.NbdError) as raised:
            client.read(512, 4096)
    assert [r[2] for r in server.requests] == [1024 * 1024] * 3
    assert 'not aligned' in str(raised.value)


def test_a_server_that_stops_answering_times_out(serve):
    server = serve(lambda *args: None)
    with nbd.Client(server.path, 'vda', timeout=0.3) as client:
        with pytest.raises(nbd.NbdError) as raised:
            client.read(0, 4096)
    assert 'no answer within' in str(raised.value)


def test_reads_in_flight_are_answered_in_any_order(serve):
    """Replies to pipelined reads come back reversed and interleaved."""
    held = []

    def reply(sock, handle, command, offset, length):
        held.append((handle, offset, length))
        if len(held) < 3:
            return
        half = [length // 2 for _h, _o, length in held]
        for (handle, offset, _n), n in zip(reversed(held), reversed(half)):
            data_chunk(sock, handle, offset, n, done=False)
        for (handle, offset, length), n in zip(held, half):
            data_chunk(sock, handle, offset + n, length - n)
        held.clear()
    server = serve(reply)
    plan = [(0, 4096), (65536, 8192), (8192, 512), (1 << 20, 4096),
            (SIZE - 4096, 4096), (4096, 1024)]
    with nbd.Client(server.path, 'vda') as client:
        got = [bytes(b) for b in client.read_ahead(plan, depth=3)]
    assert got == [data(o, n) for o, n in plan]


def test_a_read_ahead_left_early_leaves_the_connection_usable(serve):
    def reply(sock, handle, command, offset, length):
        data_chunk(sock, handle, offset, length)
    server = serve(reply)
    with nbd.Client(server.path, 'vda') as client:
        reads = client.read_ahead([(o, 4096) for o in range(0, SIZE, 1 << 20)])
        assert bytes(next(reads)) == data(0, 4096)
        reads.close()
        # The replies still due were taken off the connection.
        assert bytes(client.read(512, 1024)) == data(512, 1024)


def test_a_read_ahead_outliving_its_connection_ends_quietly(serve):
    def reply(sock, handle, command, offset, length):
        data_chunk(sock, handle, offset, length)
    server = serve(reply)
    client = nbd.Client(server.path, 'vda')
    reads = client.read_ahead([(o, 4096) for o in range(0, SIZE, 1 << 20)])
    next(reads)
    client.close()
    reads.close()
