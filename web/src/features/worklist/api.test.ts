import { describe, expect, it } from "vitest";
import { NO_FILTERS, pageRange, worklistQuery } from "./api";

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

describe("the worklist's pages", () => {
  it("says which rows a page shows", () => {
    expect(pageRange(0, 50, 0)).toBe("0 studies");
    expect(pageRange(0, 50, 1)).toBe("1–1 of 1 study");
    expect(pageRange(0, 50, 120)).toBe("1–50 of 120 studies");
    expect(pageRange(2, 50, 120)).toBe("101–120 of 120 studies");
  });
});
