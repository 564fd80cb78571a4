"""The snapshot options, defined once, registered by whoever needs them.

vmsnap's own services register them in ``[libvirt]`` (config.py); the
Nova driver registers them in nova.conf's ``[vmsnap]``.  Nothing is
registered on import, so importing this inside nova-compute cannot clash
with Nova's own options.
"""

from oslo_config import cfg

CONNECTION_URI = cfg.StrOpt(
    'connection_uri',
    default='qemu:///system',
    help='libvirt connection URI of the local hypervisor.')

snapshot_opts = [
    cfg.StrOpt('snapshot_mode',
               default='auto',
               choices=[
                   ('auto', 'Live when libvirt and QEMU on this host can '
                            'copy this disk while the guest runs, else '
                            'cold. The choice and its reason are logged.'),
                   ('live', 'Always capture the disks while the guest '
                            'runs (libvirt\'s backup API where the host '
                            'has it, else a block copy); fail when that is '
                            'impossible, e.g. for a shut-off guest.'),
                   ('cold', 'Save the guest\'s memory (managedsave), '
                            'capture the disk, restore the guest. A '
                            'shut-off guest is captured without starting '
                            'it.'),
               ],
               help='How the guest\'s disk is captured.'),
    cfg.StrOpt('snapshots_directory',
               default='$state_path/snapshots',
               help='Directory for working files: a backup job\'s scratch '
                    'file (the old blocks a guest overwrites while its '
                    'snapshot streams into Glance), NBD sockets, memory '
                    'states, and the full copies that a block copy, a '
                    'compressed image, a revert or an export still needs. '
                    'Its free space is checked before each snapshot; '
                    'every directory on its path must be searchable (o+x) '
                    'by the user QEMU runs as.'),
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
                help='Compress qcow2 snapshot images. A snapshot read '
                     'through the backup API is compressed as it streams '
                     'into Glance, on every core, reading the disk twice; '
                     'block copy and cold snapshots without the backup API '
                     'compress with qemu-img convert -c into a full copy in '
                     'snapshots_directory first. Smaller images, more CPU '
                     'time: on two cores, slower than uncompressed. Ignored '
                     'for raw.'),
    cfg.StrOpt('snapshot_compression_type',
               default='zlib',
               choices=[
                   ('zlib', 'What every qcow2 reader understands, and what '
                            'Nova writes.'),
                   ('zstd', 'Several times faster than zlib for a '
                            'slightly smaller image; readable by QEMU 5.1 '
                            'and later (qcow2 compression_type, which '
                            'Glance\'s format inspector accepts).'),
               ],
               help='How snapshot_compression compresses the clusters.'),
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
    cfg.BoolOpt('snapshot_memory',
                default=False,
                help='Also capture the guest\'s memory and device state, '
                     'at the same instant as all its writable disks, into a '
                     'hidden image linked to the disk image, so that a '
                     'revert (server rebuild onto the snapshot) resumes the '
                     'guest where it was instead of booting it. A request '
                     'may ask for it, or not, with the image property '
                     'vmsnap_memory=true|false, which wins over this '
                     'option. Shut-off guests have no memory to capture.'),
    cfg.BoolOpt('incremental',
                default=False,
                help='Take incremental snapshots: the first of a chain is '
                     'full and starts a checkpoint (a persistent dirty '
                     'bitmap in the qcow2); each next one uploads only the '
                     'clusters changed since its parent\'s checkpoint, as a '
                     'qcow2 delta that is restored with its parents. A '
                     'request may ask for it, or not, with the image '
                     'property vmsnap_incremental=true|false, which wins '
                     'over this option. Whenever a delta cannot be trusted '
                     'the snapshot is full and vmsnap_mode_reason says why.'),
    cfg.StrOpt('plain_content_digest',
               default='auto',
               choices=[
                   ('auto', 'Where it costs little: on a full snapshot '
                            'whose zero runs are no larger than its data, '
                            'or total under 1 GiB. A mostly empty disk and '
                            'a delta record the tree digest only (a delta '
                            'taken without its parent\'s block digests on '
                            'this host records both).'),
                   ('always', 'On every snapshot image: a delta reads the '
                              'whole disk again from the backup export '
                              'after its upload, a mostly empty disk hashes '
                              'every zero byte. A point flattened or '
                              'exported from a chain has it when the delta '
                              'recorded it.'),
               ],
               help='When an image records vmsnap_content_sha256, the '
                    'sha256 of its virtual disk\'s raw content (what '
                    '"qemu-img convert -O raw | sha256sum" gives), beside '
                    'or instead of vmsnap_content_tree_sha256. vmsnap '
                    'verifies either; the plain one costs hashing every '
                    'byte of the virtual disk, zeros included.'),
    cfg.IntOpt('max_chain_length',
               default=7,
               min=1,
               help='Images in one chain, the full one included; the next '
                    'incremental snapshot starts a new chain. Longer chains '
                    'upload less but take longer to restore.'),
    cfg.StrOpt('memory_seal_key_file',
               default='$state_path/memory-seal.key',
               help='File holding the secret that seals memory images: '
                    'a memory state is fed to QEMU, which trusts it, so a '
                    'revert restores only a state whose seal (an HMAC of '
                    'its sha256, image, snapshot and server) this key '
                    'made; image properties alone can be edited by the '
                    'image owner. Created (mode 0600) on first use; copy '
                    'it to every host that reverts the same servers.'),
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
