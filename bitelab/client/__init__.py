"""The bitelab command-line client."""
