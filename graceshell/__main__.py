"""`python -m graceshell` is the same as the `graceshell` command."""

from graceshell.early import main

if __name__ == "__main__":
    main()
