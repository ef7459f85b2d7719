"""The gateway's HTTP API driven in process (httpx): its app and account fixtures (conftest.py)
and helpers that speak the upload protocol (uploading.py), shared by the suites that drive the
API (tests/uploads, tests/security, tests/forwarding, tests/auth)."""
