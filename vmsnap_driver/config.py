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

libvirt_opts = [
    cfg.StrOpt('connection_uri',
               default='qemu:///system',
               help='libvirt connection URI of the local hypervisor.'),
    cfg.StrOpt('snapshot_mode',
               default='auto',
               choices=[
                   ('auto', 'Live when libvirt and QEMU on this host can '
                            'copy this disk while the guest runs, else '
                            'cold. The choice and its reason are logged.'),
                   ('live', 'Always copy the disk while the guest runs '
                            '(block copy); fail when that is impossible, '
                            'e.g. for a shut-off guest.'),
                   ('cold', 'Save the guest\'s memory (managedsave), '
                            'capture the disk, restore the guest. A '
                            'shut-off guest is captured without starting '
                            'it.'),
               ],
               help='How the guest\'s disk is captured.'),
    cfg.StrOpt('snapshots_directory',
               default='$state_path/snapshots',
               help='Directory for temporary snapshot files. It must be on '
                    'a filesystem with room for a full copy of the disk, '
                    'and every directory on its path must be searchable '
                    '(o+x) by the user QEMU runs as.'),
    cfg.StrOpt('snapshot_image_format',
               default='qcow2',
               choices=[
                   ('qcow2', 'Sparse, optionally compressed; what Nova '
                             'uploads for qcow2-backed instances.'),
                   ('raw', 'Plain disk bytes: larger uploads, no '
                           'conversion when booted from Ceph or LVM.'),
               ],
               help='Disk format of the image uploaded to Glance.'),
    cfg.BoolOpt('snapshot_compression',
                default=False,
                help='Compress qcow2 snapshot images (qemu-img convert -c). '
                     'Smaller uploads, more CPU time. Ignored for raw.'),
    cfg.StrOpt('snapshot_disks',
               default='root',
               choices=[
                   ('root', 'Only the first disk, into the requested image '
                            '(what Nova does).'),
                   ('all', 'Every writable file-backed disk, all at the '
                           'same instant: the first into the requested '
                           'image, each other one into an image vmsnap '
                           'creates, all linked by vmsnap_group_* '
                           'properties.'),
               ],
               help='Which of the guest\'s disks a snapshot captures.'),
    cfg.StrOpt('quiesce',
               default='auto',
               choices=[
                   ('auto', 'Freeze the guest\'s filesystems through its '
                            'QEMU guest agent when it has an agent channel '
                            'or its image says hw_qemu_guest_agent=yes; if '
                            'the agent does not answer, take a '
                            'crash-consistent snapshot and say so.'),
                   ('required', 'Fail the snapshot, before touching the '
                                'guest, when its filesystems cannot be '
                                'frozen (as the image property '
                                'os_require_quiesce=yes does).'),
                   ('off', 'Never freeze: crash-consistent snapshots.'),
               ],
               help='Whether live snapshots freeze the guest\'s filesystems '
                    'at the instant of capture (only then: never during '
                    'the copy).'),
    cfg.IntOpt('quiesce_timeout',
               default=10,
               min=1,
               help='Seconds the guest agent may take to freeze or thaw '
                    'the filesystems; a hung agent fails the freeze '
                    'instead of hanging the snapshot, and a thaw is always '
                    'sent.'),
    cfg.BoolOpt('use_backup_api',
                default=True,
                help='Use libvirt\'s backup API (pull mode) when the host '
                     'supports it: the disk is frozen in time in '
                     'milliseconds and read once, straight into Glance, '
                     'with no copy on the host\'s disks; a cold snapshot '
                     'resumes the guest before its disk is read. When off, '
                     'or when libvirt lacks it, live snapshots block-copy '
                     'the disk first and cold ones keep the guest stopped '
                     'while its disk is read.'),
    cfg.IntOpt('block_job_timeout',
               default=600,
               min=1,
               help='Seconds a live block copy may take to reach the '
                    'mirroring phase before the snapshot is abandoned '
                    '(the copy is cancelled and the guest keeps its '
                    'disk).'),
    cfg.IntOpt('block_copy_bandwidth',
               default=0,
               min=0,
               help='Limit, in MiB/s, on the live block copy so that a '
                    'snapshot does not starve the guest\'s own I/O. '
                    '0 means no limit.'),
]

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

GLANCE_SERVICE_TYPE = 'image'


def _register_keystoneauth_opts(conf: cfg.ConfigOpts) -> None:
    ks_loading.register_session_conf_options(conf, glance_group.name)
    ks_loading.register_auth_conf_options(conf, glance_group.name)
    ks_loading.register_adapter_conf_options(
        conf, glance_group.name,
        include_deprecated=False)
    conf.set_default('service_type', GLANCE_SERVICE_TYPE,
                     group=glance_group.name)


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(default_opts)
    conf.register_group(libvirt_group)
    conf.register_opts(libvirt_opts, group=libvirt_group)
    conf.register_group(api_group)
    conf.register_opts(api_opts, group=api_group)
    conf.register_group(glance_group)
    _register_keystoneauth_opts(conf)


register_opts(CONF)
log.register_options(CONF)
lockutils.set_defaults(lock_path='$state_path/lock')


def parse_args(argv: Optional[Sequence[str]],
               default_config_files: Optional[Sequence[str]] = None) -> None:
    """Parse the command line and config files, then set up logging."""
    CONF(list(argv or []), project='vmsnap',
         version=vmsnap_driver.__version__,
         default_config_files=default_config_files)
    log.setup(CONF, 'vmsnap')


def list_opts() -> list:
    """Options for oslo-config-generator (namespace ``vmsnap``)."""
    adapter_opts = ks_loading.get_adapter_conf_options(
        include_deprecated=False)
    for opt in adapter_opts:
        if opt.dest == 'service_type':
            opt.default = GLANCE_SERVICE_TYPE
    glance_opts = list(itertools.chain(
        ks_loading.get_session_conf_options(),
        ks_loading.get_auth_common_conf_options(),
        ks_loading.get_auth_plugin_conf_options('password'),
        adapter_opts,
    ))
    return [
        ('DEFAULT', default_opts),
        (libvirt_group, libvirt_opts),
        (api_group, api_opts),
        (glance_group, _dedup(glance_opts)),
    ]


def _dedup(opts: list) -> list:
    seen = set()
    unique = []
    for opt in opts:
        if opt.dest not in seen:
            seen.add(opt.dest)
            unique.append(opt)
    return unique
