"""Pure per-recording transforms (arrays and paths in, arrays out); nothing here imports Ray."""
