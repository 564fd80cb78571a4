"""``vmsnap-snapshot``: the first name of ``vmsnap snapshot``, kept working.

``vmsnap-snapshot [--config-file F] SERVER [--image-name N]`` runs
``vmsnap snapshot`` with the same arguments.
"""

import sys
from typing import List, Optional

from vmsnap_driver.cmd import vmsnap


def main(argv: Optional[List[str]] = None) -> int:
    return vmsnap.main(['snapshot'] + list(
        sys.argv[1:] if argv is None else argv))


if __name__ == '__main__':
    sys.exit(main())
