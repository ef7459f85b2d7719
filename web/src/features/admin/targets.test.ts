import { describe, expect, it } from "vitest";
import { formatAge, targetState, type TargetHealth } from "./targets";

const healthy: TargetHealth = {
  name: "pacs",
  url: "http://127.0.0.1:8042/dicom-web",
  profile: "orthanc",
  default: true,
  reachable: true,
  probe_error: null,
  breaker: "closed",
  breaker_retry_seconds: null,
  queued_jobs: 0,
  retrying_jobs: 0,
  oldest_job_age_seconds: null,
  last_delivered_at: null,
  last_attempt_at: null,
  last_attempt_outcome: null,
  last_error: null,
};

describe("the PACS targets page", () => {
  it("says an age in the largest units that matter", () => {
    expect(formatAge(0)).toBe("0 s");
    expect(formatAge(59.4)).toBe("59 s");
    expect(formatAge(59.6)).toBe("1 min");
    expect(formatAge(61)).toBe("1 min");
    expect(formatAge(3600)).toBe("1 h");
    expect(formatAge(3 * 3600 + 5 * 60)).toBe("3 h 5 min");
    expect(formatAge(49 * 3600)).toBe("2 d 1 h");
    expect(formatAge(-4)).toBe("0 s");
  });

  it("puts an unreachable target before a paused one before a healthy one", () => {
    expect(targetState(healthy)).toBe("ok");
    expect(targetState({ ...healthy, breaker: "open" })).toBe("degraded");
    expect(targetState({ ...healthy, retrying_jobs: 2 })).toBe("degraded");
    expect(targetState({ ...healthy, reachable: false, probe_error: "ConnectError" })).toBe("down");
  });
});
