"""The end-to-end demo application (`make demo`, or `python -m demo` from the repository root): it
drives the product's command-line tools, one process per step, as a user would, and writes a report with
pictures. It is not part of the installed package."""
