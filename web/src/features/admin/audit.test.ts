import { describe, expect, it } from "vitest";
import { auditQuery, localToInstant, NO_AUDIT_FILTERS } from "./audit";

describe("the audit log's search", () => {
  it("sends nothing for blank filters", () => {
    expect(auditQuery(NO_AUDIT_FILTERS)).toEqual({});
  });

  it("turns a local time into the instant the API wants, with its zone", () => {
    const instant = localToInstant("2026-12-06T09:30");
    expect(instant).toBe(new Date(2026, 11, 6, 9, 30).toISOString());
    expect(instant).toMatch(/Z$/);
    expect(localToInstant("2026-12-06")).toBeNull();
    expect(localToInstant("")).toBeNull();
  });

  it("sends each filter set, trimmed; an actor id only when it is a whole id", () => {
    const query = auditQuery({
      action: " report.sign ",
      outcome: "denied",
      actorId: "0B9E8A4E-1111-4222-8333-444455556666",
      study: " 1.2.3 ",
      since: "2026-12-01T00:00",
      until: "2026-12-0",
    });
    expect(query).toEqual({
      action: "report.sign",
      outcome: "denied",
      actor_id: "0b9e8a4e-1111-4222-8333-444455556666",
      study_instance_uid: "1.2.3",
      since: new Date(2026, 11, 1).toISOString(),
    });
    expect(auditQuery({ ...NO_AUDIT_FILTERS, actorId: "0b9e8a4e" })).toEqual({});
  });
});
