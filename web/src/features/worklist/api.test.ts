import { describe, expect, it } from "vitest";
import { NO_FILTERS, worklistQuery } from "./api";

describe("the worklist's query", () => {
  it("asks for everything, oldest first as the gateway sorts, when no filter is set", () => {
    expect(worklistQuery(NO_FILTERS)).toEqual({ limit: 50, offset: 0 });
  });

  it("sends each filter set, trimmed, the modality in upper case", () => {
    expect(
      worklistQuery({ status: "assigned", modality: " ct ", dateFrom: "2026-12-01", dateTo: "2026-12-06", text: "  QUAX " }, 2, 20),
    ).toEqual({ status: "assigned", modality: "CT", date_from: "2026-12-01", date_to: "2026-12-06", q: "QUAX", limit: 20, offset: 40 });
  });

  it("leaves out a day that is not a whole date (a date field being typed)", () => {
    expect(worklistQuery({ ...NO_FILTERS, dateFrom: "2026-1", dateTo: "yesterday" })).toEqual({ limit: 50, offset: 0 });
  });
});
