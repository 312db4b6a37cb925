"""The run folder: its files, their names and formats, its lock, its status."""
