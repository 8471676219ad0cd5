"""`python -m qkdtwin.qkd_module --config /etc/qkdtwin/qkd-<link>.yml`"""

import sys

from qkdtwin.qkd_module.service import main
from qkdtwin.service import run_service

sys.exit(run_service(main, "Emulated QKD module (one end of one link)"))
