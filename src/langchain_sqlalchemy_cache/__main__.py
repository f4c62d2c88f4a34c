"""``python -m langchain_sqlalchemy_cache``."""

import sys

from ._cli import main

sys.exit(main())
