"""The ``tripmine`` console script: the Rust command line (mine, eval, audit, view) inside the
extension, so that a pip install needs no separate binary."""

import sys

from . import _tripmine


def main():
    sys.exit(_tripmine.run(["tripmine", *sys.argv[1:]], own_process=True))


if __name__ == "__main__":
    main()
