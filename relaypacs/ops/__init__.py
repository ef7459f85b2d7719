"""Operations endpoints: liveness, readiness (each dependency checked with a short timeout) and
the Prometheus metrics."""
