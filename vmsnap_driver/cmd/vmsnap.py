"""``vmsnap``: operator commands.  ``vmsnap verify IMAGE_ID`` for now.

It reads the same configuration as the service (``--config-file``) to
reach Glance.
"""

import os
import sys
from typing import List, Optional

from oslo_config import cfg

from vmsnap_driver import config
from vmsnap_driver import exception
from vmsnap_driver import glance
from vmsnap_driver import verify

CONF = config.CONF


def _add_parsers(subparsers) -> None:
    parser = subparsers.add_parser(
        'verify', help='Download a snapshot image and check it against the '
                       'content digest it carries; exits 1 on a mismatch.')
    parser.add_argument('image_id')
    parser.add_argument('--no-progress', action='store_true',
                        help='Do not draw a progress bar.')


command_opt = cfg.SubCommandOpt('command', title='Commands',
                                handler=_add_parsers)


def main(argv: Optional[List[str]] = None) -> int:
    CONF.register_cli_opt(command_opt)
    config.parse_args(sys.argv[1:] if argv is None else argv)
    images = glance.ImageService(CONF)
    try:
        # The download is a full image: put it where snapshots go, which
        # the operator sized for that.
        os.makedirs(CONF.libvirt.snapshots_directory, mode=0o711,
                    exist_ok=True)
        verdict = verify.verify(images, CONF.command.image_id,
                                workdir=CONF.libvirt.snapshots_directory,
                                show_progress=not CONF.command.no_progress)
    except exception.VmsnapException as e:
        print('ERROR: %s' % e, file=sys.stderr)
        return 2
    for check in verdict.checks:
        print('%-5s %-15s %s' % ('ok' if check.ok else 'FAIL', check.name,
                                 check.detail))
    print('image %s: %s' % (
        verdict.image_id, 'VERIFIED' if verdict.ok else 'MISMATCH'))
    return 0 if verdict.ok else 1


if __name__ == '__main__':
    sys.exit(main())
