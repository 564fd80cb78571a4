"""Make sure the demo guest exists and runs, or remove it: a tiny TCG guest
built from Debian packages (see tests/functional/testguest.py)."""

import argparse
import shutil

import libvirt

from tests.functional import testguest


def _ignore(_ctx, _err) -> None:
    """Silence libvirt's default printing of every error on stderr."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--name', default='vmsnap-demo')
    parser.add_argument('--workdir', default='/var/lib/vmsnap-demo/guest')
    parser.add_argument('--remove', action='store_true',
                        help='Stop and undefine the guest, remove its files.')
    args = parser.parse_args()
    libvirt.registerErrorHandler(_ignore, None)
    conn = libvirt.open('qemu:///system')
    found = [d for d in conn.listAllDomains(0) if d.name() == args.name]
    if args.remove:
        for dom in found:
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(
                libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE |
                libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA |
                libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
            print('Demo guest %s removed' % args.name)
        shutil.rmtree(args.workdir, ignore_errors=True)
        return
    if not found:
        print('Building and defining demo guest %s in %s'
              % (args.name, args.workdir))
        testguest.TestGuest(conn, args.workdir, name=args.name).start()
        found = [conn.lookupByName(args.name)]
    dom = found[0]
    if not dom.isActive():
        dom.create()
    print('Demo guest %s (%s) is running' % (args.name, dom.UUIDString()))


if __name__ == '__main__':
    main()
