"""Small torch-free helpers shared by every stage (atomic file writes, hashing)."""
