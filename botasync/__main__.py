"""`python -m botasync` runs the command line."""

from botasync.cli.main import main

if __name__ == "__main__":
    main()
