"""vmsnap's options, registered once on the global oslo.config object.

Everything is registered at import time (not in ``parse_args``) so that
oslo-config-generator and the tests see the same options as the service, and
so that ``parse_args`` may be called more than once in one process.
"""

import itertools
from typing import Optional, Sequence

from keystoneauth1 import loading as ks_loading
from oslo_concurrency import lockutils
from oslo_config import cfg
from oslo_log import log

import vmsnap_driver
from vmsnap_driver import snapshot_options

CONF = cfg.CONF

DEFAULT_STATE_PATH = '/var/lib/vmsnap'

default_opts = [
    cfg.StrOpt('compute_driver',
               default='libvirt',
               help='Name of the compute driver to load from the '
                    '"vmsnap.compute_drivers" entry point namespace.'),
    cfg.StrOpt('state_path',
               default=DEFAULT_STATE_PATH,
               help='Top-level directory for vmsnap\'s working files.'),
    cfg.IntOpt('graceful_shutdown_timeout',
               default=60,
               min=0,
               help='Seconds vmsnap-compute waits, on SIGTERM, for running '
                    'snapshots and reverts to end. What still runs then is '
                    'left to its journal record: the next start undoes it. '
                    '0 waits forever.'),
    cfg.IntOpt('recovery_interval',
               default=60,
               min=0,
               help='Seconds between two passes, while vmsnap-compute '
                    'runs, over the journal records that a failed '
                    'operation could not settle (libvirtd or Glance did '
                    'not answer during its cleanup): each is finished or '
                    'undone as at start-up, once what it needs answers '
                    'again. 0 disables the passes; start-up and "vmsnap '
                    'recover" still settle them.'),
    cfg.IntOpt('shutdown_timeout',
               default=60,
               min=0,
               help='Seconds "openstack server stop" waits for the guest to '
                    'shut down when asked (ACPI), before powering it off, '
                    'as Nova\'s option of that name. 0 powers off at once.'),
    cfg.IntOpt('max_concurrent_snapshots',
               default=5,
               min=1,
               help='Snapshots vmsnap-compute runs at once; more wait in '
                    'line. Each holds a full copy of a disk in '
                    'snapshots_directory while it runs.'),
]

libvirt_group = cfg.OptGroup(
    'libvirt', title='libvirt options',
    help='How vmsnap reaches the hypervisor and takes snapshots.')

libvirt_opts = [snapshot_options.CONNECTION_URI] + (
    snapshot_options.snapshot_opts)

api_group = cfg.OptGroup(
    'api', title='vmsnap-compute API options',
    help='The Compute API subset that vmsnap-compute serves.')

api_opts = [
    cfg.HostAddressOpt('host',
                       default='127.0.0.1',
                       help='Address vmsnap-compute listens on.'),
    cfg.PortOpt('port',
                default=8774,
                help='Port vmsnap-compute listens on.'),
    cfg.StrOpt('auth_strategy',
               default='noauth',
               choices=[
                   ('noauth', 'No authentication: every request is '
                              'trusted. Only for a single host; refused on '
                              'a non-loopback address unless '
                              'allow_noauth_remote is set.'),
                   ('keystone', 'Validate tokens with keystonemiddleware\'s '
                                'auth_token ([keystone_authtoken]).'),
               ],
               help='How API requests are authenticated.'),
    cfg.BoolOpt('allow_noauth_remote',
                default=False,
                help='Allow auth_strategy = noauth on a non-loopback '
                     'address, letting anyone who reaches the port snapshot '
                     'any guest on this host.'),
    cfg.IntOpt('threads',
               default=16,
               min=1,
               help='Threads of the WSGI server answering API requests.'),
]

glance_group = cfg.OptGroup(
    'glance', title='Image service options',
    help='How vmsnap reaches Glance. Any keystoneauth1 auth plugin works: '
         '"auth_type = password" with the usual [glance] credentials for a '
         'cloud, or "auth_type = none" with "endpoint_override" for a '
         'Glance without Keystone.')

glance_opts = [
    cfg.IntOpt('num_retries',
               default=3,
               min=0,
               help='How many times a Glance call that failed for want of a '
                    'connection or with a 5xx answer is made again, 1, 2, '
                    '4 ... seconds apart, when repeating it is safe: reads, '
                    'property updates, deletes, and an upload from a file '
                    'while the image is still queued. Creating an image '
                    'and a streamed upload are never repeated. 0: no '
                    'retries.'),
]

GLANCE_SERVICE_TYPE = 'image'
# Seconds, per socket operation.
GLANCE_TIMEOUT = 300


def _register_keystoneauth_opts(conf: cfg.ConfigOpts) -> None:
    ks_loading.register_session_conf_options(conf, glance_group.name)
    ks_loading.register_auth_conf_options(conf, glance_group.name)
    ks_loading.register_adapter_conf_options(
        conf, glance_group.name,
        include_deprecated=False)
    conf.set_default('service_type', GLANCE_SERVICE_TYPE,
                     group=glance_group.name)
    # A Glance that stops answering fails the request instead of hanging it.
    conf.set_default('timeout', GLANCE_TIMEOUT, group=glance_group.name)


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(default_opts)
    conf.register_group(libvirt_group)
    conf.register_opts(libvirt_opts, group=libvirt_group)
    conf.register_group(api_group)
    conf.register_opts(api_opts, group=api_group)
    conf.register_group(glance_group)
    conf.register_opts(glance_opts, group=glance_group)
    _register_keystoneauth_opts(conf)


register_opts(CONF)
log.register_options(CONF)
lockutils.set_defaults(lock_path='$state_path/lock')


def parse_args(argv: Optional[Sequence[str]],
               default_config_files: Optional[Sequence[str]] = None,
               stdout_is_output: bool = False) -> None:
    """Parse the command line and config files, then set up logging.

    :param stdout_is_output: standard output carries the command's results
        (records, an archive): oslo.log, which logs there when told to log
        nowhere else, logs to standard error instead.
    """
    CONF(list(argv or []), project='vmsnap',
         version=vmsnap_driver.__version__,
         default_config_files=default_config_files)
    if stdout_is_output and not (CONF.log_file or CONF.use_journal
                                 or CONF.log_config_append
                                 or CONF.use_stderr):
        CONF.set_override('use_stderr', True)
    log.setup(CONF, 'vmsnap')


def list_opts() -> list:
    """Options for oslo-config-generator (namespace ``vmsnap``)."""
    adapter_opts = ks_loading.get_adapter_conf_options(
        include_deprecated=False)
    for opt in adapter_opts:
        if opt.dest == 'service_type':
            opt.default = GLANCE_SERVICE_TYPE
    session_opts = ks_loading.get_session_conf_options()
    for opt in session_opts:
        if opt.dest == 'timeout':
            opt.default = GLANCE_TIMEOUT
    keystoneauth_opts = list(itertools.chain(
        session_opts,
        ks_loading.get_auth_common_conf_options(),
        ks_loading.get_auth_plugin_conf_options('password'),
        adapter_opts,
    ))
    return [
        ('DEFAULT', default_opts),
        (libvirt_group, libvirt_opts),
        (api_group, api_opts),
        (glance_group, glance_opts + _dedup(keystoneauth_opts)),
    ]


def _dedup(opts: list) -> list:
    seen = set()
    unique = []
    for opt in opts:
        if opt.dest not in seen:
            seen.add(opt.dest)
            unique.append(opt)
    return unique
