"""The Textual app and the `tunebench` command line. Never imports torch at start-up."""
