"""
Routes: the file format, its validation, and the table requests are matched
against.
"""
