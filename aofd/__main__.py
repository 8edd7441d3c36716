"""`python -m aofd` runs the daemon's command line."""

from aofd.cli import aofd_main

if __name__ == "__main__":
    raise SystemExit(aofd_main.main())
