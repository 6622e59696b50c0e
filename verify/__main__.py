import os
import sys

from verify.cli import main

try:
    code = main()
    sys.stdout.flush()
except BrokenPipeError:  # `python -m verify PATH | head`: not an error of the input
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    code = 0
sys.exit(code)
