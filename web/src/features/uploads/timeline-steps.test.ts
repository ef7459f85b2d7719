import { describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { STEPS, stepLabel } from "./timeline-steps";

/** The step names the API documents for TimelineStep.step (its description lists them). */
function documentedSteps(): string[] {
  const openapi = JSON.parse(readFileSync(new URL("../../lib/api/openapi.json", import.meta.url), "utf8")) as {
    components: { schemas: { TimelineStep: { properties: { step: { description: string } } } } };
  };
  // The names, without their explanations in parentheses.
  const description = openapi.components.schemas.TimelineStep.properties.step.description.replace(/\([^)]*\)/g, "");
  return [...description.matchAll(/(?:^|, )([a-z_]+)/g)].map((m) => m[1] ?? "");
}

describe("timeline steps", () => {
  it("has a label for every step the API documents", () => {
    const steps = documentedSteps();
    expect(steps).toContain("expired");
    expect(steps).toContain("purged");
    expect(steps).toContain("report_write_back_failed");
    expect(steps.filter((s) => !(s in STEPS))).toEqual([]);
  });

  it("labels expiry and retention, and shows an unknown step as named", () => {
    expect(stepLabel("expired")).toBe("Expired unfinished");
    expect(stepLabel("purged")).toBe("Stored copy deleted");
    expect(stepLabel("some_future_step")).toBe("some_future_step");
  });
});
