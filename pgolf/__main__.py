"""``python -m pgolf``: see pgolf/cli.py."""

from pgolf.cli import main

raise SystemExit(main())
