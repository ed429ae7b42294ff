if __name__ == "__main__":
    import sys

    from lesionlab.cli import main

    sys.exit(main())
