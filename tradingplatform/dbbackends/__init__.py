"""Database backends of the platform (Django's, with fewer round trips where it is safe)."""
