"""Chaos scenarios against a real gateway process (`python -m chaos <scenario>`).

- `kill`: SIGKILL of the gateway at random points of upload and relay; the CLI resumes;
  every instance fetched back from Orthanc and compared by SHA-256.
- `kill_pipelined`: the same with the pipelined relay on and studies of 100-140 single-chunk
  instances (sent to the PACS while they upload).
- `diskfull`: the chunk storage on a small filesystem (tmpfs) that fills up during chunk
  writes: 507 answers, nothing acknowledged lost, the upload completes once space is freed.
- `pgrestart`: a private PostgreSQL restarted mid-upload: 503 answers, then recovery
  without restarting the gateway, nothing lost.
- `slowclients`: many slow-body clients hold connections while `/health/live` stays fast.

Each prints its lost / corrupted / stuck counts, which must be zero, and exits non-zero
otherwise. docs/operations.md ("Chaos") describes them and their results.
"""
