"""``python -m pyzsl ...``: the same command line as the ``pyzsl`` script."""
from pyzsl.cli import main

raise SystemExit(main())
