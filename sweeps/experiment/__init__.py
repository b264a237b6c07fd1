"""The experiment folder: the only code that knows its file names (files.py), writes them
(storage.py's atomic writes, tables.py's result tables) and reads them back (folder.py)."""
