"""``python -m trainer``: the readable trainer, run directly (the packed file runs the same main)."""

from trainer.main import main

raise SystemExit(main())
