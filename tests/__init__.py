"""The test suite, one package: each of its modules is imported under one name."""
