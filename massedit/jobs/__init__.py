"""What the command line runs: edit files, edit jobs with run folders and checkpoints,
reports, patch commands, statistics jobs, the demo."""
