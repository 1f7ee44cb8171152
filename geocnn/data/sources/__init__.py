"""Source readers: turn files on disk into validated Catalogs."""
