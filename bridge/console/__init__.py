"""The operator console: a password-protected web page at /console/, off unless configured."""
