"""``compute_driver = vmsnap.LibvirtDriver`` for nova-compute.

Nova only imports ``'nova.virt.' + compute_driver``; this module is where
that name leads.
"""

from vmsnap_driver.nova import LibvirtDriver  # noqa: F401
