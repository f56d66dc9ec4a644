"""The model server and the code that loads and scores a model exactly as production does."""
