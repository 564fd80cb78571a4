"""``vmsnap-compute``: the service behind ``openstack server image create``.

It loads the configured driver through stevedore, serves the Compute API
subset with cheroot (a multi-threaded WSGI server), and on SIGTERM stops
taking requests, drops queued snapshots and lets running ones finish, so
that no guest is left saved and no image half-written.
"""

import ipaddress
import os
import signal
import socket
import sys
import threading
from typing import Any, List, Optional

from cheroot import wsgi
from oslo_log import log as logging
from stevedore import driver as stevedore_driver

from vmsnap_driver.api import app
from vmsnap_driver.compute import manager as manager_mod
from vmsnap_driver import config
from vmsnap_driver import exception
from vmsnap_driver import glance
from vmsnap_driver import host as host_mod
from vmsnap_driver import policy

LOG = logging.getLogger(__name__)
CONF = config.CONF


def _is_loopback(address: str) -> bool:
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback
                   for info in socket.getaddrinfo(address, None))
    except (OSError, ValueError):
        return False


def build_app(manager: manager_mod.ComputeManager,
              images: glance.ImageService):
    keystone = CONF.api.auth_strategy == 'keystone'
    application = app.ComputeAPI(
        host_mod.Host(CONF.libvirt.connection_uri), manager, images,
        policy.Enforcer(CONF), trusted=not keystone,
        state_path=CONF.state_path)
    if keystone:
        # Imported here: only keystone deployments need it.
        from keystonemiddleware import auth_token
        application = app.VersionsWithoutAuth(
            application, auth_token.AuthProtocol(application, {}))
    return application


def _recover_periodically(driver: Any, stop: threading.Event,
                          interval: int) -> None:
    """Settle records a failed cleanup left, once their peers answer.

    A record in the journal belongs either to an operation still running
    (recovery waits for its instance lock, then finds it gone) or to one
    whose cleanup failed: without these passes, that guest would wait for
    the next start of the service.
    """
    while interval and not stop.wait(interval):
        try:
            driver.recover()
        except Exception:  # the next pass tries again
            LOG.exception('A recovery pass failed')


def main(argv: Optional[List[str]] = None) -> int:
    config.parse_args(sys.argv[1:] if argv is None else argv)
    api = CONF.api
    if (api.auth_strategy == 'noauth' and not _is_loopback(api.host)
            and not api.allow_noauth_remote):
        LOG.error('Refusing to serve without authentication on %s: anyone '
                  'reaching it could snapshot any guest. Listen on a '
                  'loopback address, set [api] auth_strategy = keystone, '
                  'or set [api] allow_noauth_remote = true.', api.host)
        return 2
    driver = stevedore_driver.DriverManager(
        'vmsnap.compute_drivers', CONF.compute_driver,
        invoke_on_load=True).driver
    images = glance.ImageService(CONF)
    manager = manager_mod.ComputeManager(
        driver, images, CONF.max_concurrent_snapshots,
        images_for=lambda context: glance.for_context(CONF, context, images))
    try:
        driver.init_host(socket.gethostname())
    except exception.VmsnapException as e:
        # Each request connects again: libvirtd or Glance may be back.
        LOG.warning('Not ready at start-up, trying again on each request: '
                    '%s', e)
    # Before the first request: no guest stays as a killed process left it.
    for outcome in driver.recover():
        manager.record_fault(outcome.instance_uuid, outcome.message)
    server = wsgi.Server((api.host, api.port), build_app(manager, images),
                         numthreads=api.threads,
                         server_name='vmsnap-compute')
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_args: stop.set())
    server.prepare()
    serving = threading.Thread(target=server.serve, name='wsgi',
                               daemon=True)
    serving.start()
    LOG.info('vmsnap-compute serving the Compute API on http://%s:%d '
             '(driver %s, auth %s)', api.host, server.bind_addr[1],
             CONF.compute_driver, api.auth_strategy)
    libvirt_conf = CONF.libvirt
    LOG.info('Snapshots: libvirt %(uri)s, mode %(mode)s, backup API '
             '%(backup)s, quiesce %(quiesce)s, disks %(disks)s, memory '
             '%(memory)s, incremental %(incremental)s, format %(fmt)s%(c)s, '
             'workspace %(dir)s; Glance %(glance)s (auth %(gauth)s, '
             '%(retries)d retries); state in %(state)s',
             {'uri': libvirt_conf.connection_uri,
              'mode': libvirt_conf.snapshot_mode,
              'backup': 'on' if libvirt_conf.use_backup_api else 'off',
              'quiesce': libvirt_conf.quiesce,
              'disks': libvirt_conf.snapshot_disks,
              'memory': libvirt_conf.snapshot_memory,
              'incremental': libvirt_conf.incremental,
              'fmt': libvirt_conf.snapshot_image_format,
              'c': ' compressed (%s)' % libvirt_conf.snapshot_compression_type
              if libvirt_conf.snapshot_compression else '',
              'dir': libvirt_conf.snapshots_directory,
              'glance': CONF.glance.endpoint_override or 'from the catalog',
              'gauth': CONF.glance.auth_type,
              'retries': CONF.glance.num_retries,
              'state': CONF.state_path})
    threading.Thread(target=_recover_periodically,
                     args=(driver, stop, CONF.recovery_interval),
                     name='recovery', daemon=True).start()
    while not stop.wait(1):
        pass
    LOG.info('Stopping: no new requests; queued snapshots are dropped and '
             'running ones finish')
    server.stop()
    if not manager.stop(CONF.graceful_shutdown_timeout or None):
        # Worker threads would keep the interpreter alive: leave now.
        os._exit(1)
    LOG.info('vmsnap-compute stopped')
    return 0


if __name__ == '__main__':
    sys.exit(main())
