"""python -m nanoalign.tasks.instruct build ... | examples ...: the task's command line (cli.py)."""
from nanoalign.tasks.instruct.cli import main

if __name__ == "__main__":
    main()
