"""What a run leaves behind: point keys, records and their store, the table, tracking."""
