"""Keystone's WSGI app for gunicorn (`keystone_wsgi:application`).

Keystone parses sys.argv with oslo.config when the app is built, and under
gunicorn sys.argv holds gunicorn's own options, which Keystone rejects. The
configuration comes from OS_KEYSTONE_CONFIG_DIR and OS_KEYSTONE_CONFIG_FILES.
"""

import sys

sys.argv = sys.argv[:1]

from keystone.wsgi.api import application  # noqa: E402,F401
