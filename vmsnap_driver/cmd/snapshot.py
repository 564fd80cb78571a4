"""``vmsnap-snapshot``: snapshot one local guest into Glance, from a shell.

It does what a compute manager does around the driver: create the queued
image, load the configured driver through stevedore, call ``snapshot``, and
delete the image if the snapshot fails, so that no empty or partial image is
left behind.
"""

import dataclasses
import sys
from typing import List, Optional

from oslo_config import cfg
from oslo_context import context as oslo_context
from oslo_log import log as logging
from stevedore import driver as stevedore_driver

from vmsnap_driver import config
from vmsnap_driver import exception
from vmsnap_driver import glance
from vmsnap_driver import host as host_mod
from vmsnap_driver import progress

LOG = logging.getLogger(__name__)
CONF = config.CONF

cli_opts = [
    cfg.StrOpt('instance', positional=True, required=True,
               help='Name or UUID of the libvirt domain to snapshot.'),
    cfg.StrOpt('image-name', default=None,
               help='Name of the new image (default: "<domain> snapshot").'),
]
CONF.register_cli_opts(cli_opts)


@dataclasses.dataclass
class Instance:
    uuid: str
    name: str


def main(argv: Optional[List[str]] = None) -> int:
    config.parse_args(sys.argv[1:] if argv is None else argv)
    driver = stevedore_driver.DriverManager(
        'vmsnap.compute_drivers', CONF.compute_driver,
        invoke_on_load=True).driver
    images = glance.ImageService(CONF)
    try:
        guest = host_mod.Host(CONF.libvirt.connection_uri).lookup(
            CONF.instance)
        name = CONF.image_name or '%s snapshot' % guest.name
        image = images.create(name, {'image_type': 'snapshot',
                                     'instance_uuid': guest.uuid})
    except exception.VmsnapException as e:
        print('ERROR: %s' % e, file=sys.stderr)
        return 1
    bar = progress.Progress(0, 'uploading', enabled=sys.stderr.isatty())

    def uploaded(done: int, expected: int) -> None:
        bar.total = max(expected, 1)
        bar.update(done - bar.done)
    try:
        driver.snapshot(oslo_context.RequestContext(),
                        Instance(uuid=guest.uuid, name=guest.name),
                        image['id'], progress=uploaded)
    except exception.VmsnapException as e:
        images.delete(image['id'])
        print('ERROR: %s' % e, file=sys.stderr)
        return 1
    bar.finish()
    image = images.get(image['id'])
    for key in ('id', 'name', 'status', 'disk_format', 'size',
                'vmsnap_mode', 'vmsnap_capture_start', 'vmsnap_capture_end'):
        print('%-22s %s' % (key, image.get(key)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
