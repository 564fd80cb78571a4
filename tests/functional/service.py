"""vmsnap-compute run as its own process, and the real client against it."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

BIN = os.path.dirname(sys.executable)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


class Service:
    """A running vmsnap-compute process with its own config file."""

    def __init__(self, workroot, glance_url, **sections):
        self.glance_url = glance_url
        self.dir = tempfile.mkdtemp(dir=workroot, prefix='compute-')
        os.chmod(self.dir, 0o755)
        self.port = _free_port()
        self.url = 'http://127.0.0.1:%d' % self.port
        options = {
            'DEFAULT': {'state_path': self.dir},
            'api': {'host': '127.0.0.1', 'port': self.port},
            'glance': {'auth_type': 'none',
                       'endpoint_override': glance_url},
        }
        for section, values in sections.items():
            options.setdefault(section, {}).update(values)
        self.config = os.path.join(self.dir, 'vmsnap.conf')
        with open(self.config, 'w') as f:
            for section, values in options.items():
                f.write('[%s]\n' % section)
                for key, value in values.items():
                    f.write('%s = %s\n' % (key, value))
        self.log = os.path.join(self.dir, 'compute.log')
        self.proc = None

    def start(self, wait=True):
        with open(self.log, 'a') as log:
            # Its own process group: a test can kill it and its children.
            self.proc = subprocess.Popen(
                [os.path.join(BIN, 'vmsnap-compute'),
                 '--config-file', self.config],
                stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        if wait:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(self.url + '/', timeout=2).read()
                    return self
                except OSError:
                    if self.proc.poll() is not None or (
                            time.monotonic() > deadline):
                        raise AssertionError('vmsnap-compute did not start:\n'
                                             + self.log_text())
                    time.sleep(0.2)
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise
        return self.proc.returncode

    def kill(self):
        """SIGKILL the whole process group, as an OOM or a reboot would."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def log_text(self):
        with open(self.log) as f:
            return f.read()

    def request(self, method, path, body=None, headers=None):
        """(status, headers, parsed JSON body or None)."""
        data = body if isinstance(body, (bytes, type(None))) else (
            json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data,
                                     method=method, headers=dict(
                                         {'Content-Type': 'application/json'},
                                         **(headers or {})))
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, hdrs, raw = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:
            status, hdrs, raw = e.code, e.headers, e.read()
        return status, hdrs, json.loads(raw) if raw else None

    def wait_task_done(self, uuid, timeout=300):
        """The server's document once no task runs on it."""
        deadline = time.monotonic() + timeout
        while True:
            server = self.request('GET', '/v2.1/servers/' + uuid)[2][
                'server']
            if server['OS-EXT-STS:task_state'] is None:
                return server
            assert time.monotonic() < deadline, server
            time.sleep(0.2)

    def start_snapshot(self, guest, name, *properties):
        """createImage as the client sends it; the new image's id."""
        status, _h, body = self.request(
            'POST', '/v2.1/servers/%s/action' % guest.uuid,
            {'createImage': {'name': name, 'metadata': dict(
                prop.split('=', 1) for prop in properties)}},
            {'OpenStack-API-Version': 'compute 2.45'})
        assert status == 202, body
        return body['image_id']

    def create_image(self, guest, name, *properties):
        """A snapshot through the API as the client asks for one; its id.

        Waits for the snapshot to end and checks its image is active, as
        ``openstack server image create --wait`` does, polling every 0.2 s
        where the client polls every 5 s.  Tests of the client itself use
        the client.
        """
        image_id = self.start_snapshot(guest, name, *properties)
        self.wait_task_done(guest.uuid)
        with urllib.request.urlopen('%s/v2/images/%s' % (
                self.glance_url, image_id), timeout=30) as resp:
            image = json.loads(resp.read())
        assert image['status'] == 'active', (image, self.log_text()[-3000:])
        return image_id

    def rebuild(self, guest, image_id):
        """``openstack server rebuild --wait``, polling every 0.2 s."""
        status, _h, body = self.request(
            'POST', '/v2.1/servers/%s/action' % guest.uuid,
            {'rebuild': {'imageRef': image_id}})
        assert status == 202, body
        server = self.wait_task_done(guest.uuid)
        assert server['status'] != 'ERROR', server
        return server

    def openstack(self, *args, check=True):
        env = dict(os.environ,
                   OS_AUTH_TYPE='none',
                   OS_ENDPOINT=self.glance_url,
                   OS_COMPUTE_ENDPOINT_OVERRIDE=self.url + '/v2.1',
                   OS_IMAGE_ENDPOINT_OVERRIDE=self.glance_url)
        result = subprocess.run([os.path.join(BIN, 'openstack')] + list(args),
                                env=env, capture_output=True, text=True,
                                timeout=300)
        if check:
            assert result.returncode == 0, (
                'openstack %s failed:\n%s\n%s\nservice log:\n%s'
                % (' '.join(args), result.stdout, result.stderr,
                   self.log_text()[-3000:]))
        return result
