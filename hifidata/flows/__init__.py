"""Prefect flows and tasks: they wire the stages together and hold no science.

Importing this package turns Prefect's telemetry off unless the user configured it: campaigns
often run on clusters without internet, where the attempt only produces an error line.
"""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
