"""The ``spa-export`` command line: thin click commands over the Python API."""
