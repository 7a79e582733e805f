# Running __main__ on import would start the command line.
collect_ignore = ["__main__.py"]
