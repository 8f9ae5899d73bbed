"""Answers for a person: a company's peers and why two companies are alike, from the command line."""
