"""WSGI entry points (module paths for uwsgi or gunicorn)."""
