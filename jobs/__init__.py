"""The job queue (Huey over SQLite), the run store and the detached engine process.

Imports `engine` only inside task bodies, never at module level.
"""
