"""Chaos scenarios against a real gateway process (`python -m chaos <scenario>`).

- `kill`: SIGKILL of the gateway at random points of upload and relay; the CLI resumes;
  every instance fetched back from Orthanc and compared by SHA-256.
- `diskfull`: the chunk storage on a small filesystem (tmpfs) that fills up during chunk
  writes: 507 answers, nothing acknowledged lost, the upload completes once space is freed.
- `pgrestart`: a private PostgreSQL restarted mid-upload: 503 answers, then recovery
  without restarting the gateway, nothing lost.
- `slowclients`: many slow-body clients hold connections while `/health/live` stays fast.

Each prints its lost / corrupted / stuck counts, which must be zero, and exits non-zero
otherwise. docs/operations.md ("Chaos") describes them and their results.
"""
