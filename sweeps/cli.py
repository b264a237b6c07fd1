"""How every command ends: a UserError is one line on stderr and exit status 2."""
from __future__ import annotations

import sys
import warnings
from typing import Callable, NoReturn

from trainables.errors import UserError


def run(main: Callable[[], int]) -> NoReturn:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        code = main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)
