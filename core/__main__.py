import sys

from core.cli import main
from core.logs import configure_logging

configure_logging()  # a process's log; in-process callers (tests) keep their own
sys.exit(main())
