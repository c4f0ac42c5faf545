"""Is this machine ready for the course? One line per check: OK, WARN or FAIL, and the fix.

    python3 scripts/check_setup.py              # works before `make setup` too (standard library only)
    make check                                  # the same, with .venv's Python once it exists
    python3 scripts/check_setup.py --no-timing  # skip the training-speed measurement (about a minute)

The checks themselves are in machine_checks.py and need Python 3.10. This file only checks the version
first, so that any Python, 2.7 included, can read it and an old one gets one clear line, not a traceback.
Keep it that way: no f-strings, annotations or other newer syntax here.
"""

import os
import sys

MIN_PYTHON = (3, 10)  # the same as machine_checks.MIN_PYTHON and scripts/setup.sh (a test keeps them equal)


def too_old_line(version_info, executable):
    """The FAIL line for a Python older than MIN_PYTHON, or None."""
    if tuple(version_info)[:2] >= MIN_PYTHON:
        return None
    shown = ".".join(str(part) for part in tuple(version_info)[:3])
    needs = "{}.{}".format(*MIN_PYTHON)
    return (
        "FAIL  python           {} ({}); the course needs {} or newer"
        "  -> fix: install Python {}+ and run `PYTHON=/path/to/python3.x make setup`".format(
            shown, executable, needs, needs
        )
    )


if __name__ == "__main__":
    line = too_old_line(sys.version_info, sys.executable)
    if line:
        sys.stdout.write(line + "\nNot ready: 1 check failed; fix it, then run this again.\n")
        sys.exit(1)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import machine_checks

    sys.exit(machine_checks.main())
