"""The generated demo corpus: real pieces, rendered takes with known inserted deviations, and labels."""
