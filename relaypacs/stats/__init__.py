"""Daily statistics of the gateway's work: uploads, bytes, instances, delivery latency, failure
reasons, per PACS target; computed by a scheduled job and read by administrators."""
