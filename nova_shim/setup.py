"""vmsnap-nova: makes ``compute_driver = vmsnap.LibvirtDriver`` load in Nova.

Install it beside Nova and vmsnap-driver, in nova-compute's environment:
``pip install 'vmsnap-driver[nova]' ./nova_shim``.  It declares no
requirements of its own, so that installing it never pulls a different
Nova or vmsnap than the ones already there.
"""

import setuptools

setuptools.setup(
    name='vmsnap-nova',
    version='1.0.0',
    description='nova.virt.vmsnap: vmsnap\'s snapshots inside nova-compute',
    packages=['nova.virt.vmsnap'],
)
