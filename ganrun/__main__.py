"""`python -m ganrun ...` (also what torchrun runs: `torchrun ... -m ganrun train`)."""

from ganrun.cli import main

if __name__ == "__main__":
    main()
