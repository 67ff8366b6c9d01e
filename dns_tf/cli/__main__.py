"""``python -m dns_tf.cli``: the ``dns-tf`` command."""

import sys

from dns_tf.cli import main

sys.exit(main())
