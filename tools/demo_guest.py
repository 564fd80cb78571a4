"""Make sure the demo guest exists and runs: a tiny TCG guest built from
Debian packages (see tests/functional/testguest.py)."""

import argparse

import libvirt

from tests.functional import testguest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--name', default='vmsnap-demo')
    parser.add_argument('--workdir', default='/var/lib/vmsnap-demo/guest')
    args = parser.parse_args()
    conn = libvirt.open('qemu:///system')
    try:
        dom = conn.lookupByName(args.name)
    except libvirt.libvirtError:
        print('Building and defining demo guest %s in %s'
              % (args.name, args.workdir))
        testguest.TestGuest(conn, args.workdir, name=args.name).start()
        dom = conn.lookupByName(args.name)
    if not dom.isActive():
        dom.create()
    print('Demo guest %s (%s) is running' % (args.name, dom.UUIDString()))


if __name__ == '__main__':
    main()
