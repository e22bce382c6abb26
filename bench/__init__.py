"""The benchmark (``make bench``): the real stack, a bulk job, and where the time goes.

A development tool run from the repository; not part of the installed package or images.
"""
